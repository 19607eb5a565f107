from pacsfhir.cli import main

main()

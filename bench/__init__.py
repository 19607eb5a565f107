"""Benchmarks for pacsfhir, side by side with Orthanc: ``python -m bench.run --help``."""

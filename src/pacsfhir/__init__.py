"""pacsfhir: the FHIR R4 face of a PACS."""

__version__ = "0.1.0"

"""Pure DICOM -> FHIR mapping: no I/O."""

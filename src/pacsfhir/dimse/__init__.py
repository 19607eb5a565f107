"""DIMSE (classic DICOM networking): pacsfhir as a Storage SCP (``listener``), its
instances committed in groups (``group_commit``)."""

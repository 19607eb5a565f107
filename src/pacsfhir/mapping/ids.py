"""Moved to ``pacsfhir.vocabulary.ids``; these names stay importable from here only for
``api/`` (to remove once api/ imports the vocabulary)."""

from pacsfhir.vocabulary.ids import ENDPOINT_ID, endpoint_patient, patient_endpoint_id

__all__ = ["ENDPOINT_ID", "endpoint_patient", "patient_endpoint_id"]

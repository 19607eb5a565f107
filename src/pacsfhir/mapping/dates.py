"""Moved to ``pacsfhir.vocabulary.dates``; these names stay importable from here only for
``api/`` (to remove once api/ imports the vocabulary)."""

from pacsfhir.vocabulary.dates import US_PER_SECOND, fhir_period, from_micros

__all__ = ["US_PER_SECOND", "fhir_period", "from_micros"]

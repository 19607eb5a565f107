"""What one request may see of the index: every study, one patient's, or nothing.

The one home of that decision for every surface: FHIR search and its compartment, FHIR
reads, QIDO-RS, WADO-RS and STOW-RS all take a ``Scope`` and apply it through
``clause`` (in SQL) or ``admits`` (a row already read). A request's scope starts as
everything and is only ever narrowed (``narrow``): by the path (``/fhir/Patient/{id}/...``),
later by a token's patient; two different patients narrow to nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, false, select, true

from pacsfhir.index.schema import patient, study


@dataclass(frozen=True)
class Scope:
    """``patient_id``: the FHIR id of the only patient visible (None: every patient);
    ``nothing``: no study at all is visible."""

    patient_id: str | None = None
    nothing: bool = False

    def narrow(self, patient_id: str | None) -> Scope:
        """This scope, seeing at most ``patient_id``'s studies (None: no narrowing)."""
        if patient_id is None or self.nothing:
            return self
        if self.patient_id is None or self.patient_id == patient_id:
            return Scope(patient_id)
        return Scope(nothing=True)

    @property
    def everything(self) -> bool:
        """Whether nothing is hidden (no condition needed)."""
        return self.patient_id is None and not self.nothing

    def admits(self, patient_id: str) -> bool:
        """Whether a study or patient row of ``patient_id`` is visible."""
        if self.nothing:
            return False
        return self.patient_id is None or self.patient_id == patient_id

    def clause(self) -> ColumnElement[bool]:
        """The condition on ``study`` rows visible in this scope."""
        if self.nothing:
            return false()
        if self.patient_id is None:
            return true()
        return study.c.patient_pk.in_(
            select(patient.c.pk).where(patient.c.resource_id == self.patient_id)
        )

    @property
    def key(self) -> tuple[str | None, bool]:
        """Tells scopes apart where results are remembered (match counts)."""
        return (self.patient_id, self.nothing)

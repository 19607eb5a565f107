"""What one request may see of the index: every study, one patient's, the studies matching
a token's search restrictions, or nothing.

The one home of that decision for every surface: FHIR search and its compartment, FHIR
reads, QIDO-RS, WADO-RS and STOW-RS all take a ``Scope`` and apply it through
``clause`` (in SQL) or ``admits`` (a row already read). A request's scope starts as
everything and is only ever narrowed (``narrow``): by the path (``/fhir/Patient/{id}/...``),
by a token's patient, by the search restrictions of the scopes that granted the request
(``restrict``: SMART v2 ``patient/ImagingStudy.rs?modality=CT``). Each narrowing is a
condition every visible study meets.

Restrictions are conditions on studies that only SQL can test (``clause``): ``admits``
tests the patients alone, so a caller deciding whether one study is visible under a
restricted scope (``restricted``) asks the index with ``clause``.

A patient id names a DICOM patient (its derived id) or an EHR patient (``index.links``):
the studies of an EHR patient are those of the DICOM patients linked to it. So narrowing
to a DICOM patient and then to the EHR patient it is linked to leaves that DICOM
patient's studies, and narrowing to two unrelated patients leaves nothing.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, false, or_, select, true

from pacsfhir.index.restriction import Pairs, Restriction, compile_alternatives, restriction_clause
from pacsfhir.index.schema import patient, study


@dataclass(frozen=True)
class Scope:
    """``patients``: the patient ids every visible study must belong to (each a DICOM
    patient's own id or the EHR patient it is linked to), in the order they narrowed the
    scope; ``restrictions``: for each restricting narrowing, its alternatives, one of
    which every visible study matches; ``nothing``: no study at all is visible."""

    patients: tuple[str, ...] = ()
    nothing: bool = False
    restrictions: tuple[tuple[Restriction, ...], ...] = ()

    def narrow(self, patient_id: str | None) -> Scope:
        """This scope, seeing at most ``patient_id``'s studies (None: no narrowing)."""
        if patient_id is None or self.nothing or patient_id in self.patients:
            return self
        return Scope((*self.patients, patient_id), restrictions=self.restrictions)

    def restrict(self, alternatives: Iterable[Pairs] | None) -> Scope:
        """This scope, seeing at most the studies matching one of ``alternatives`` (each a
        scope's search parameters; None: no narrowing). An alternative this server cannot
        honour grants nothing; 403 (``Forbidden``) when none is left."""
        if alternatives is None or self.nothing:
            return self
        compiled = compile_alternatives(alternatives)
        if compiled in self.restrictions:
            return self
        return Scope(self.patients, restrictions=(*self.restrictions, compiled))

    @property
    def patient_id(self) -> str | None:
        """The patient the scope was first narrowed to (the one a path or token names,
        whose DICOMweb base the request's Endpoints point to); None when not narrowed."""
        return self.patients[0] if self.patients else None

    @property
    def everything(self) -> bool:
        """Whether nothing is hidden (no condition needed)."""
        return not self.patients and not self.nothing and not self.restrictions

    @property
    def restricted(self) -> bool:
        """Whether search restrictions narrow the scope: ``admits`` does not test them."""
        return bool(self.restrictions)

    def admits(self, patient_id: str, linked_to: str | None = None) -> bool:
        """Whether a study or patient row of patient ``patient_id`` (linked to EHR patient
        ``linked_to``, if any) is visible, as far as the patients tell: a study's search
        restrictions are tested by ``clause`` only (see ``restricted``)."""
        if self.nothing:
            return False
        return all(p in (patient_id, linked_to) for p in self.patients)

    def clause(self) -> ColumnElement[bool]:
        """The condition on ``study`` rows visible in this scope."""
        if self.nothing:
            return false()
        if self.everything:
            return true()
        return and_(
            *(
                study.c.patient_pk.in_(
                    select(patient.c.pk).where(
                        or_(patient.c.resource_id == p, patient.c.linked_to == p)
                    )
                )
                for p in self.patients
            ),
            *(restriction_clause(alternatives) for alternatives in self.restrictions),
        )

    @property
    def key(self) -> Hashable:
        """Tells scopes apart where results are remembered (match counts)."""
        restrictions = tuple(tuple(r.pairs for r in rs) for rs in self.restrictions)
        return (self.patients, self.nothing, restrictions)

"""The CapabilityStatement: exactly what the server supports, built from the same
registry the search parser uses so the two cannot drift apart."""

from __future__ import annotations

from typing import Any

from pacsfhir import __version__
from pacsfhir.mapping.smart import OAuthUris, rest_security
from pacsfhir.search.parse import IMAGING_STUDY_PARAMS, INCLUDES, MODIFIERS, SORTABLE

_DEFINITIONS = {
    "_id": "http://hl7.org/fhir/SearchParameter/Resource-id",
    "_lastUpdated": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
    "identifier": "http://hl7.org/fhir/SearchParameter/clinical-identifier",
    "patient": "http://hl7.org/fhir/SearchParameter/clinical-patient",
}
RELEASE_DATE = "2026-11-23"


def _search_params() -> list[dict[str, Any]]:
    params = []
    for name, definition in IMAGING_STUDY_PARAMS.items():
        modifiers = sorted(MODIFIERS[definition.type])
        if definition.targets:
            modifiers += [f"{t} (type)" for t in definition.targets]
        documentation = "Modifiers: " + ", ".join(":" + m for m in modifiers) + "."
        if name in ("patient", "subject"):
            documentation += (
                " Chains to Patient: _id, identifier, name, family, given, birthdate, gender"
                " (patient.identifier=, subject:Patient.identifier=)."
            )
        params.append(
            {
                "name": name,
                "definition": _DEFINITIONS.get(
                    name, f"http://hl7.org/fhir/SearchParameter/ImagingStudy-{name}"
                ),
                "type": definition.type.value,
                "documentation": documentation,
            }
        )
    return params


def capability_statement(fhir_base: str, oauth: OAuthUris | None = None) -> dict[str, Any]:
    """The statement; with ``oauth``, ``rest.security`` names SMART and its endpoints."""
    read_only = [{"code": "read"}]
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": RELEASE_DATE,
        "publisher": "pacsfhir",
        "kind": "instance",
        "software": {"name": "pacsfhir", "version": __version__},
        "implementation": {
            "description": "pacsfhir: the FHIR R4 face of a PACS",
            "url": fhir_base,
        },
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Search paging uses opaque cursors (_cursor) and stays consistent while"
                    " new studies arrive. _sort: "
                    + ", ".join(SORTABLE)
                    + ". _summary: true, false, count, data, text. _total: none, estimate,"
                    " accurate. Prefer: handling=strict rejects unknown parameters."
                ),
                "resource": [
                    {
                        "type": "ImagingStudy",
                        "profile": "http://hl7.org/fhir/StructureDefinition/ImagingStudy",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "versioning": "versioned",
                        "readHistory": False,
                        "updateCreate": False,
                        "conditionalRead": "not-supported",
                        "searchInclude": sorted(INCLUDES),
                        "searchParam": _search_params(),
                    },
                    {
                        "type": "Patient",
                        "profile": "http://hl7.org/fhir/StructureDefinition/Patient",
                        "interaction": read_only,
                        "versioning": "versioned",
                        "readHistory": False,
                    },
                    {
                        "type": "Endpoint",
                        "profile": "http://hl7.org/fhir/StructureDefinition/Endpoint",
                        "interaction": read_only,
                        "readHistory": False,
                    },
                ],
                "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"],
            }
        ],
    }
    if oauth is not None:
        statement["rest"][0]["security"] = rest_security(oauth)
    return statement

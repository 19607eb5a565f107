"""Code systems: DICOM coding scheme designators -> FHIR system URIs, DCM modality codes
and SOP Class names, all read from pydicom's dictionaries rather than typed by hand."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydicom.uid import UID

Concepts = dict[str, dict[str, tuple[str, list[int]]]]  # keyword -> {code: (meaning, cids)}


@cache
def _dcm_concepts() -> Concepts:
    """pydicom's generated DCM concepts (imported on first use: it is a large module)."""
    from pydicom.sr import _concepts_dict

    concepts: Concepts = _concepts_dict.concepts["DCM"]  # type: ignore[assignment]
    return concepts


@cache
def _cid_keywords(cid: int) -> frozenset[str]:
    from pydicom.sr import _cid_dict

    return frozenset(_cid_dict.cid_concepts[cid]["DCM"])


DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
RFC3986 = "urn:ietf:rfc:3986"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
IMAGINGSTUDY_STATUS = "http://hl7.org/fhir/imagingstudy-status"
ADMIN_GENDER = "http://hl7.org/fhir/administrative-gender"

# PS3.16 section 8 ("Coding Schemes"), the HL7 URIs of the schemes met in practice.
_SCHEME_SYSTEMS = {
    "DCM": DCM,
    "SCT": SNOMED,
    "SRT": SNOMED,
    "LN": "http://loinc.org",
    "RADLEX": "http://radlex.org",
    "RADLEX_PLAYBOOK": "http://www.radlex.org",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "UCUM": "http://unitsofmeasure.org",
    "UMLS": "http://www.nlm.nih.gov/research/umls",
    "C4": "http://www.ama-assn.org/go/cpt",
    "CPT": "http://www.ama-assn.org/go/cpt",
    "FMA": "http://purl.org/sig/ont/fma",
    "NCIt": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
}

ACQUISITION_MODALITY_CID = 29


def coding_system(designator: str) -> str | None:
    return _SCHEME_SYSTEMS.get(designator.strip())


@cache
def _dcm_codes() -> dict[str, tuple[str, frozenset[int]]]:
    codes: dict[str, tuple[str, frozenset[int]]] = {}
    for entries in _dcm_concepts().values():
        for code, (meaning, cids) in entries.items():
            codes[code] = (meaning, frozenset(cids))
    return codes


@cache
def _acquisition_modalities() -> frozenset[str]:
    keywords = _cid_keywords(ACQUISITION_MODALITY_CID)
    return frozenset(
        code
        for keyword, entries in _dcm_concepts().items()
        if keyword in keywords
        for code in entries
    )


def modality_coding(modality: str) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": DCM, "code": modality}
    known = _dcm_codes().get(modality)
    if known:
        coding["display"] = known[0]
    return coding


def is_acquisition_modality(modality: str) -> bool:
    return modality in _acquisition_modalities()


def sop_class_coding(sop_class_uid: str) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": RFC3986, "code": f"urn:oid:{sop_class_uid}"}
    name = UID(sop_class_uid).name
    if name and name != sop_class_uid:
        coding["display"] = name
    return coding


def dicom_code_coding(code: dict[str, str]) -> dict[str, Any]:
    """A FHIR Coding from a DICOM code item (Code Value, Scheme, Meaning)."""
    coding: dict[str, Any] = {}
    system = coding_system(code.get("CodingSchemeDesignator", ""))
    if system:
        coding["system"] = system
    if code.get("CodeValue"):
        coding["code"] = code["CodeValue"]
    if code.get("CodeMeaning"):
        coding["display"] = code["CodeMeaning"]
    return coding

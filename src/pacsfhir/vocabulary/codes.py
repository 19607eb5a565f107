"""Code systems: DICOM coding scheme designators -> FHIR system URIs, DCM modality codes
(``modality_table``, generated from pydicom's PS3.16 dictionaries, which are too large
to import in a server) and SOP Class names (pydicom's UID dictionary)."""

from __future__ import annotations

from typing import Any

from pydicom.uid import UID

from pacsfhir.vocabulary.modality_table import ACQUISITION_MODALITIES, MODALITY_MEANINGS

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


def coding_system(designator: str) -> str | None:
    return _SCHEME_SYSTEMS.get(designator.strip())


def modality_coding(modality: str) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": DCM, "code": modality}
    meaning = MODALITY_MEANINGS.get(modality)
    if meaning:
        coding["display"] = meaning
    return coding


def is_acquisition_modality(modality: str) -> bool:
    return modality in ACQUISITION_MODALITIES


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

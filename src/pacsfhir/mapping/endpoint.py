"""The Endpoint resource that tells apps where the DICOMweb (WADO-RS) service lives."""

from __future__ import annotations

from typing import Any

from pacsfhir.vocabulary.ids import ENDPOINT_ID

CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
PAYLOAD_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-payload-type"


def endpoint(address: str, endpoint_id: str = ENDPOINT_ID) -> dict[str, Any]:
    """``address`` is a DICOMweb base URL; apps append ``/studies/{uid}``."""
    return {
        "resourceType": "Endpoint",
        "id": endpoint_id,
        "status": "active",
        "connectionType": {"system": CONNECTION_TYPE, "code": "dicom-wado-rs"},
        "name": "pacsfhir DICOMweb (WADO-RS)",
        "payloadType": [
            {"coding": [{"system": PAYLOAD_TYPE, "code": "any"}], "text": "DICOM WADO-RS"}
        ],
        "payloadMimeType": ["application/dicom"],
        "address": address,
    }

"""SMART on FHIR discovery (pure): ``/.well-known/smart-configuration`` (SMART App Launch
2.0.0, "Conformance") and the CapabilityStatement's ``rest.security`` with the
``oauth-uris`` extension (which the Python ``fhirclient`` reads)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
CAPABILITIES = (
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-standalone-patient",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
)
SCOPES = (
    "openid",
    "fhirUser",
    "launch/patient",
    "offline_access",
    "patient/ImagingStudy.rs",
    "patient/ImagingStudy.read",
    "patient/Patient.rs",
    "patient/*.rs",
    "user/ImagingStudy.rs",
    "user/ImagingStudy.c",
    "system/ImagingStudy.rs",
    "system/ImagingStudy.c",
)


@dataclass(frozen=True)
class OAuthUris:
    authorize: str
    token: str
    introspection: str = ""


def smart_configuration(uris: OAuthUris) -> dict[str, Any]:
    config: dict[str, Any] = {
        "authorization_endpoint": uris.authorize,
        "token_endpoint": uris.token,
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "private_key_jwt",
        ],
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": list(CAPABILITIES),
    }
    if uris.introspection:
        config["introspection_endpoint"] = uris.introspection
    return config


def rest_security(uris: OAuthUris) -> dict[str, Any]:
    """``CapabilityStatement.rest.security`` naming SMART and its OAuth endpoints."""
    return {
        "cors": True,
        "service": [
            {
                "coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"}],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
            }
        ],
        "extension": [
            {
                "url": OAUTH_URIS,
                "extension": [
                    {"url": "authorize", "valueUri": uris.authorize},
                    {"url": "token", "valueUri": uris.token},
                ],
            }
        ],
    }

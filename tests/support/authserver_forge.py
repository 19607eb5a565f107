"""Tokens a well-behaved JOSE library refuses to make, built by hand from base64url
parts: that is what an attacker does. Used only to check that verifiers refuse them.

- ``unsigned``: ``alg: none`` and an empty signature (RFC 7519 §6, "Unsecured JWTs").
- ``hmac_signed``: HS256/384/512 whose secret is the server's RSA *public* key (its PEM),
  the algorithm-confusion attack on verifiers that pick the algorithm from the header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

HMAC_DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_segment({**header, 'alg': 'none'})}.{_segment(claims)}."


def hmac_signed(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    alg = header["alg"]
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    mac = hmac.new(secret, signing_input.encode("ascii"), HMAC_DIGESTS[alg]).digest()
    return f"{signing_input}.{b64url(mac)}"

"""multipart/related bodies read back by the standard library's MIME parser, as an
independent client would (pacsfhir's own writer is ``dicom.multipart``)."""

from __future__ import annotations

import email
import email.policy


def body_parts(content_type: str, body: bytes) -> list[bytes]:
    """The payload of each part of a multipart body of type ``content_type``."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.message_from_bytes(head + body, policy=email.policy.HTTP)
    assert message.get_content_type() == "multipart/related", message.get_content_type()
    found = []
    for part in message.iter_parts():
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        found.append(data)
    return found

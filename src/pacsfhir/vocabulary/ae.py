"""DICOM Application Entity titles (PS3.5 6.2, VR AE): pure."""

from __future__ import annotations


def ae_title_problem(title: str) -> str | None:
    """Why ``title`` cannot be an AE title (1-16 characters of the default repertoire, no
    backslash or control characters, not only spaces), or None."""
    if not 1 <= len(title) <= 16:
        return "must be 1 to 16 characters"
    if not title.isascii() or any(c == "\\" or not c.isprintable() for c in title):
        return "must be printable ASCII without a backslash"
    if not title.strip():
        return "must not be only spaces"
    return None

"""What the FHIR and QIDO-RS parsers share about numbers and sizes from the network (pure).

A number in a query is ASCII digits: ``str.isdigit()`` also says yes to "²" (which
``int()`` then refuses) and ``int()`` reads "٣" as 3. A number beyond the largest integer
SQLite and PostgreSQL hold (``INT64_MAX``) reads as that integer: no index holds that many
rows, so the answer is the same (an offset past the last match), and it never reaches
SQL as an overflow.
"""

from __future__ import annotations

import re

from pacsfhir.errors import InvalidSearchParameter

INT64_MAX = 2**63 - 1  # SQLite INTEGER, PostgreSQL bigint
INT64_MIN = -(2**63)
MAX_WORDS = 32  # words one fuzzy name match takes, over all its values: one SQL term each
_DIGITS = re.compile(r"[0-9]+")
_SHOWN = 40


def shown(raw: str) -> str:
    """``raw`` quoted for an error message, cut when long (a message echoes the input,
    never kilobytes of it), in ASCII (escaped, as ``ascii()`` does: it may travel in an
    HTTP header)."""
    return ascii(raw if len(raw) <= _SHOWN else raw[:_SHOWN] + "...")


def non_negative_integer(name: str, raw: str) -> int:
    """``raw`` as a non-negative integer, at most ``INT64_MAX`` (see the module)."""
    if not _DIGITS.fullmatch(raw):
        raise InvalidSearchParameter(
            f"{name} must be a non-negative integer in ASCII digits, not {shown(raw)}"
        )
    digits = raw.lstrip("0")
    if len(digits) > len(str(INT64_MAX)):  # never int() a huge string (CPU, 4300 digits)
        return INT64_MAX
    return min(int(digits or "0"), INT64_MAX)


def is_int64(value: object) -> bool:
    """An integer (not a bool) that SQLite and PostgreSQL can compare with a column."""
    return type(value) is int and INT64_MIN <= value <= INT64_MAX

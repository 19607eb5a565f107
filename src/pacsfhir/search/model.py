"""What a FHIR search asks for, as plain data: produced by ``search.parse``, turned into
SQL by ``index.search``."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class ParamType(Enum):
    TOKEN = "token"  # noqa: S105 (a FHIR search parameter type, not a secret)
    REFERENCE = "reference"
    DATE = "date"
    STRING = "string"
    URI = "uri"


@dataclass(frozen=True)
class Token:
    """``system`` None: any system; "": no system. ``code`` None: any code."""

    system: str | None
    code: str | None


@dataclass(frozen=True)
class DateValue:
    prefix: str  # eq ne gt lt ge le sa eb ap
    low: int  # the value's implicit range, microseconds since the epoch, inclusive
    high: int


@dataclass(frozen=True)
class Reference:
    """A reference value resolved against our base: (type, id), or an external URL."""

    resource_type: str | None
    resource_id: str
    external: bool = False


Value = Token | DateValue | Reference | str


@dataclass(frozen=True)
class Criterion:
    """One search parameter occurrence: values are OR'ed; criteria are AND'ed.

    ``chain``: for ``patient.identifier`` and the like, the Patient parameter applied to
    the referenced patient. ``missing``: the ``:missing`` modifier's value.
    """

    param: str
    type: ParamType
    values: tuple[Value, ...] = ()
    modifier: str = ""
    chain: Criterion | None = None
    missing: bool | None = None


@dataclass(frozen=True)
class SortKey:
    param: str  # "started", "_lastUpdated", "_id"
    descending: bool = False


@dataclass(frozen=True)
class Cursor:
    """Where the previous page ended: its last row's sort values and primary key."""

    values: tuple[int | str | None, ...]
    pk: int


@dataclass(frozen=True)
class SearchRequest:
    criteria: tuple[Criterion, ...] = ()
    sort: tuple[SortKey, ...] = ()
    count: int = 50
    total: str = "accurate"  # none | estimate | accurate
    summary: str = ""  # "" | true | false | count | data | text
    elements: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()  # "subject" / "endpoint"
    cursor: Cursor | None = None
    # the canonical query string of what was used, for the self link
    used: tuple[tuple[str, str], ...] = field(default=())
    ignored: tuple[str, ...] = field(default=())

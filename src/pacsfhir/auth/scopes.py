"""SMART on FHIR resource scopes (App Launch 1.0 and 2.0), parsed once into what a token
allows (pure; no I/O).

Grammar (App Launch 2.0.0, "Scopes and Launch Context"):

- v2: ``<patient|user|system>/<Type|*>.<c?r?u?d?s?>[?param=value&...]``; the
  permission letters appear in this order, at least one. ``patient/ImagingStudy.rs``,
  ``user/*.cruds``, ``patient/ImagingStudy.rs?modality=CT``.
- v1: ``<patient|user|system>/<Type|*>.<read|write|*>``: ``read`` is v2's ``rs``,
  ``write`` is ``cud``, ``*`` is all five.

Anything else (``openid``, ``fhirUser``, ``launch/patient``, ``offline_access``, a
malformed scope) grants no access to resources: it is ignored here, as a resource server
ignores scopes it does not understand, and listed in ``Grant.ignored``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import parse_qsl


class Level(Enum):
    """Whose data a scope reaches: the launch patient's, the user's, or the system's."""

    PATIENT = "patient"
    USER = "user"
    SYSTEM = "system"


PERMISSIONS = "cruds"  # create, read, update, delete, search: v2's letters, in v2's order
_V1 = {"read": "rs", "write": "cud", "*": PERMISSIONS}
_SCOPE = re.compile(
    r"(?P<level>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]{0,63})"
    r"\.(?P<permissions>[a-z*]+)(?:\?(?P<query>.*))?"
)
_V2_PERMISSIONS = re.compile(r"c?r?u?d?s?")


@dataclass(frozen=True)
class ResourceScope:
    level: Level
    resource_type: str  # a FHIR resource type, or "*"
    permissions: frozenset[str]  # letters of PERMISSIONS
    restriction: tuple[tuple[str, str], ...] = ()  # v2 search parameters that must hold

    def covers(self, resource_type: str, permission: str) -> bool:
        return permission in self.permissions and self.resource_type in ("*", resource_type)


def parse_scope(text: str) -> ResourceScope | None:
    """One scope; None when it grants no resource access (see the module)."""
    match = _SCOPE.fullmatch(text)
    if match is None:
        return None
    letters = match["permissions"]
    query = match["query"]
    if letters in _V1 and query is None:
        letters = _V1[letters]
    elif not letters or not _V2_PERMISSIONS.fullmatch(letters):
        return None
    restriction: tuple[tuple[str, str], ...] = ()
    if query is not None:
        if not query or ("s" not in letters and "r" not in letters):
            return None
        try:
            restriction = tuple(parse_qsl(query, keep_blank_values=True, errors="strict"))
        except (UnicodeDecodeError, ValueError):
            return None
        if not restriction or any(not name for name, _ in restriction):
            return None
    return ResourceScope(
        Level(match["level"]), match["type"], frozenset(letters), tuple(sorted(restriction))
    )


@dataclass(frozen=True)
class Grant:
    """What a token's ``scope`` string allows."""

    scopes: tuple[ResourceScope, ...] = ()
    ignored: tuple[str, ...] = field(default=(), compare=False)

    def levels(self, resource_type: str, permission: str) -> frozenset[Level]:
        """The levels at which ``permission`` on ``resource_type`` is granted."""
        return frozenset(s.level for s in self.scopes if s.covers(resource_type, permission))

    def restrictions(
        self, resource_type: str, permission: str, level: Level
    ) -> tuple[tuple[tuple[str, str], ...], ...] | None:
        """The search restrictions one of which a request must satisfy at ``level``:
        None when some granting scope has none (unrestricted); else one tuple of
        parameters per restricted scope, any one of which suffices (empty: nothing is
        granted at that level)."""
        granting = [
            s for s in self.scopes if s.level is level and s.covers(resource_type, permission)
        ]
        if any(not s.restriction for s in granting):
            return None
        return tuple(sorted({s.restriction for s in granting}))


def parse_scopes(scope: str) -> Grant:
    """A space-separated OAuth ``scope`` string (RFC 6749 3.3) into a ``Grant``."""
    granted: list[ResourceScope] = []
    ignored: list[str] = []
    for token in scope.split():
        parsed = parse_scope(token)
        if parsed is None:
            ignored.append(token)
        elif parsed not in granted:
            granted.append(parsed)
    return Grant(tuple(granted), tuple(ignored))

"""An independent oracle for FHIR R4 search, used to check pacsfhir's ImagingStudy search.

What a search matches is computed here from first principles: HL7's own R4
SearchParameter FHIRPath expressions (``tests/support/fhir_r4.search_parameters``) are
evaluated with fhirpathpy over the resources the server emitted, and the values they yield
are matched with the rules of https://hl7.org/fhir/R4/search.html, written down below
without looking at (or importing) ``pacsfhir.search`` or ``pacsfhir.index.search``.

Where R4 leaves room for choice, this oracle decides as follows (pacsfhir's choices):

* ``param:missing=true`` matches the resources for which the parameter's FHIRPath
  expression yields nothing, ``:missing=false`` those for which it yields something, even
  if no search value could ever match it (e.g. a Reference that has only a display).
* Dates: a date, or a dateTime without a time zone, is taken as UTC (R4 leaves the zone of
  such values to the server). Every value stands for its implicit range (R4 3.1.1.5.6); a
  dateTime given to the second covers that second, ``.812`` covers that millisecond. A
  resource without a value matches no prefix, not even ``ne`` (use ``:missing``).
* ``ap`` is checked loosely (see ``approximate``): R4 only recommends "10% of the gap
  between now and the date", so everything that overlaps the value must match and nothing
  farther away than twice that (plus two days) may match.
* Tokens on ``code`` elements carry the implicit system of their required binding
  (``ImagingStudy.status`` -> http://hl7.org/fhir/imagingstudy-status), so ``|available``
  (explicitly no system) does not match; ``id``/``string``/``uri`` values have no system.
* ``:not`` with several values (``modality:not=CT,MR``) matches what matches none of them,
  including resources with no value at all (R4: ":not ... includes resources that have no
  value for the parameter").
* Strings (``patient.name``/``family``/``given``): both sides are compared after NFKD
  decomposition, removal of combining marks, case folding and whitespace collapsing; the
  default is starts-with on the whole field, ``:contains`` is a substring, ``:exact`` is
  plain equality of the unnormalised strings. A HumanName field (``name``) is matched on
  its ``text``, ``family``, ``given``, ``prefix`` and ``suffix`` parts.
* References: ``Type/id``, a bare ``id`` (any type, or the ``:Type`` modifier's) and an
  absolute URL under the server's FHIR base all mean the local resource; another absolute
  URL only matches a reference written exactly so.
* Chains (``patient.X``, ``subject:Patient.X``) resolve the references the first
  parameter's expression yields and evaluate Patient's ``X`` on the resolved Patients.
* Sorting on a date parameter orders by the lower bound of the value's range; resources
  without a value come last in both directions (R4 leaves both to the server).
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import fhirpathpy
import fhirpathpy.parser
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models as fhirpath_models

JSON = dict[str, Any]

CONTROL_PARAMETERS = frozenset(
    {"_count", "_sort", "_total", "_summary", "_elements", "_include", "_format", "_pretty"}
)
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_DAY_US = 86_400_000_000

# --------------------------------------------------------------------------- escaping


def split_unescaped(raw: str, separator: str) -> list[str]:
    """Split on ``separator`` where not escaped by a backslash (R4 3.1.1.4.3)."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in raw:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def unescape(value: str) -> str:
    return re.sub(r"\\([\\,|$])", r"\1", value)


def or_values(raw: str) -> list[str]:
    """The comma-separated alternatives of one parameter occurrence, unescaped later."""
    return split_unescaped(raw, ",")


# --------------------------------------------------------------------------- dates


@dataclass(frozen=True)
class Range:
    """An inclusive range of instants, in microseconds since 1970-01-01T00:00:00Z."""

    low: int
    high: int

    def overlaps(self, other: Range) -> bool:
        return self.low <= other.high and other.low <= self.high


_DATE = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICRO


def date_range(text: str) -> Range | None:
    """The implicit range of a FHIR date, dateTime or instant (None if it is not one)."""
    match = _DATE.fullmatch(text)
    if match is None:
        return None
    g = match.groupdict()
    year = int(g["year"])
    month = int(g["month"] or 1)
    day = int(g["day"] or 1)
    hour, minute = int(g["hour"] or 0), int(g["minute"] or 0)
    second = int(g["second"] or 0)
    fraction = g["fraction"] or ""
    try:
        start = datetime(
            year, month, day, hour, minute, second, int(fraction[:6].ljust(6, "0")), tzinfo=UTC
        )
    except ValueError:
        return None
    zone = g["zone"]
    if zone and zone != "Z":
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        start = start - offset if zone[0] == "+" else start + offset
    if g["month"] is None:
        end = start.replace(year=year + 1)
    elif g["day"] is None:
        end = start.replace(year=year + month // 12, month=month % 12 + 1)
    elif g["hour"] is None:
        end = start + timedelta(days=1)
    elif g["second"] is None:
        end = start + timedelta(minutes=1)
    elif not fraction:
        end = start + timedelta(seconds=1)
    else:
        end = start + timedelta(microseconds=10 ** max(0, 6 - len(fraction)))
    return Range(_micros(start), _micros(end) - 1)


def format_instant(micros: int, precision: str = "ms") -> str:
    """``micros`` as a UTC instant to the ``ms``, ``s`` or ``us``."""
    moment = _EPOCH + timedelta(microseconds=micros)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if precision == "ms":
        text += f".{moment.microsecond // 1000:03d}"
    elif precision == "us":
        text += f".{moment.microsecond:06d}"
    return text + "Z"


def split_date_prefix(raw: str) -> tuple[str, str]:
    if raw[:2] in DATE_PREFIXES and raw[2:3].isdigit():
        return raw[:2], raw[2:]
    return "eq", raw


def date_matches(prefix: str, search: Range, target: Range) -> bool:
    """R4 3.1.1.5.6, the target value's range against the search value's range."""
    contained = search.low <= target.low and target.high <= search.high
    if prefix == "eq":
        return contained
    if prefix == "ne":
        return not contained
    if prefix == "gt":  # the range above the search value intersects the target's
        return target.high > search.high
    if prefix == "lt":
        return target.low < search.low
    if prefix == "ge":
        return target.high > search.high or contained
    if prefix == "le":
        return target.low < search.low or contained
    if prefix == "sa":  # no overlap, target after
        return target.low > search.high
    if prefix == "eb":
        return target.high < search.low
    raise ValueError(f"no exact rule for the {prefix!r} prefix")


def approximate(search: Range, now: int) -> tuple[Range, Range]:
    """``ap``: (the range everything in which must match, the range outside which nothing
    may match). R4 recommends 10% of the gap to now; this allows twice that plus 2 days."""
    gap = max(abs(now - search.low), abs(now - search.high))
    margin = gap // 5 + 2 * _DAY_US
    return search, Range(search.low - margin, search.high + margin)


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class TokenQuery:
    """``system`` None: any system, "": no system; ``code`` None: any code."""

    system: str | None
    code: str | None


def parse_token(raw: str) -> TokenQuery:
    parts = split_unescaped(raw, "|")
    if len(parts) == 1:
        return TokenQuery(None, unescape(parts[0]))
    system, code = unescape(parts[0]), unescape("|".join(parts[1:]))
    return TokenQuery(system, code or None)


def token_pairs(fhir_type: str, value: Any, implicit_system: str | None) -> list[tuple[Any, Any]]:
    """(system, code) pairs a value offers to token search (R4 3.1.1.5.9 table)."""
    if fhir_type == "Coding":
        return [(value.get("system"), value.get("code"))]
    if fhir_type == "CodeableConcept":
        return [(c.get("system"), c.get("code")) for c in value.get("coding", [])]
    if fhir_type == "Identifier":
        return [(value.get("system"), value.get("value"))]
    if fhir_type == "ContactPoint":
        return [(None, value.get("value"))]
    if fhir_type == "code":
        return [(implicit_system, value)]
    if fhir_type == "boolean":
        return [(None, "true" if value else "false")]
    if isinstance(value, str | int):  # id, string, uri, System.String ...
        return [(None, str(value))]
    raise TypeError(f"{fhir_type} {value!r} is not searchable as a token")


def token_matches(query: TokenQuery, pairs: Iterable[tuple[Any, Any]]) -> bool:
    for system, code in pairs:
        if query.code is not None and code != query.code:
            continue
        if query.system is None:
            return True
        if query.system == "" and not system:
            return True
        if query.system and system == query.system:
            return True
    return False


# --------------------------------------------------------------------------- references


@dataclass(frozen=True)
class ReferenceQuery:
    resource_type: str | None
    resource_id: str | None
    url: str | None = None  # an absolute URL outside the server's base


def parse_reference(raw: str, type_modifier: str, fhir_base: str) -> ReferenceQuery:
    value = unescape(raw)
    if value.startswith(fhir_base + "/"):
        value = value[len(fhir_base) + 1 :]
    elif re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", value):
        return ReferenceQuery(None, None, value)
    parts = value.split("/")
    if len(parts) >= 2:
        if type_modifier and parts[0] != type_modifier:
            return ReferenceQuery(None, None, "")  # contradicts the modifier: matches nothing
        return ReferenceQuery(parts[0], parts[1])
    return ReferenceQuery(type_modifier or None, value)


def reference_target(reference: Any, fhir_base: str) -> tuple[str | None, str | None, str | None]:
    """(type, id, absolute URL) that a Reference points to; all None if only a display."""
    text = reference.get("reference") if isinstance(reference, dict) else None
    if not text or text.startswith("#"):
        return None, None, None
    if text.startswith(fhir_base + "/"):
        text = text[len(fhir_base) + 1 :]
    elif re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", text):
        return None, None, text
    parts = text.split("/")
    if len(parts) < 2:
        return None, None, None
    return parts[0], parts[1], None


def reference_matches(query: ReferenceQuery, reference: Any, fhir_base: str) -> bool:
    resource_type, resource_id, url = reference_target(reference, fhir_base)
    if query.url is not None:
        return bool(query.url) and url == query.url
    if resource_id is None or resource_id != query.resource_id:
        return False
    return query.resource_type is None or query.resource_type == resource_type


# --------------------------------------------------------------------------- strings


def normalise(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.casefold().split())


def string_parts(fhir_type: str, value: Any) -> list[str]:
    if fhir_type == "HumanName":
        parts = [value.get("text"), value.get("family")]
        for key in ("given", "prefix", "suffix"):
            parts.extend(value.get(key, []))
        return [p for p in parts if isinstance(p, str) and p]
    if isinstance(value, str):
        return [value]
    raise TypeError(f"{fhir_type} {value!r} is not searchable as a string")


def string_matches(modifier: str, query: str, value: str) -> bool:
    if modifier == "exact":
        return value == query
    if modifier == "contains":
        return normalise(query) in normalise(value)
    return normalise(value).startswith(normalise(query))


# --------------------------------------------------------------------------- definitions


@functools.cache
def _load(directory: Path, name: str) -> Any:
    with (directory / name).open(encoding="utf-8") as handle:
        return json.load(handle)


def implicit_systems(directory: Path, params: Mapping[str, JSON]) -> dict[str, str]:
    """For token parameters on a ``code`` element with a required binding to a value set
    drawn from one code system: parameter code -> that system (R4 3.1.1.5.9, ``code``)."""
    elements: dict[str, JSON] = {}
    for entry in _load(directory, "profiles-resources.json")["entry"]:
        definition = entry["resource"]
        if definition.get("resourceType") == "StructureDefinition" and "snapshot" in definition:
            for element in definition["snapshot"]["element"]:
                elements.setdefault(element["path"], element)
    value_sets = {
        entry["resource"]["url"]: entry["resource"]
        for entry in _load(directory, "valuesets.json")["entry"]
        if entry["resource"].get("resourceType") == "ValueSet"
    }
    found: dict[str, str] = {}
    for code, param in params.items():
        element = elements.get(param.get("expression") or "")
        if param["type"] != "token" or element is None:
            continue
        binding = element.get("binding") or {}
        if [t["code"] for t in element.get("type", [])] != ["code"]:
            continue
        if binding.get("strength") != "required":
            continue
        value_set = value_sets.get(str(binding.get("valueSet", "")).split("|")[0], {})
        systems = {i.get("system") for i in value_set.get("compose", {}).get("include", [])}
        if len(systems) == 1 and None not in systems:
            found[code] = str(systems.pop())
    return found


# --------------------------------------------------------------------------- the oracle


Node = tuple[str, Any]  # (FHIR type name, JSON value)
_parse = cast(Callable[[str], Any], fhirpathpy.parser.parse)
_apply = cast(Callable[..., list[Any]], fhirpathpy.apply_parsed_path)
_node = cast(Callable[[Any], Any], ResourceNode.create_node)


@functools.cache
def _parsed(expression: str) -> Any:
    return _parse(expression)


def _fhir_type(path: str | None, value: Any) -> str:
    """The FHIR type of a value fhirpathpy returned (its node path), guessed from the JSON
    shape when fhirpathpy lost it (it does after ``|``)."""
    if path and "." not in path:
        return path
    if path and path.startswith("System."):
        return "string" if path == "System.String" else path
    if isinstance(value, dict):
        if "reference" in value or ("display" in value and len(value) == 1):
            return "Reference"
        if "coding" in value:
            return "CodeableConcept"
        if "value" in value:
            return "Identifier"
        if "code" in value or "system" in value:
            return "Coding"
        if "family" in value or "given" in value or "text" in value:
            return "HumanName"
    if isinstance(value, bool):
        return "boolean"
    return "string"


@dataclass(frozen=True)
class Expected:
    """What a search must return (``must``) and may return (``may``); equal except for
    ``ap``."""

    must: frozenset[str]
    may: frozenset[str]


class Oracle:
    """Evaluates searches over given ImagingStudy and Patient resources.

    ``params`` maps a resource type to its R4 SearchParameters by code (as
    ``fhir_r4.search_parameters`` returns them); ``systems`` maps a resource type to the
    implicit code systems of its token parameters (``implicit_systems``).
    """

    def __init__(
        self,
        studies: Sequence[JSON],
        patients: Mapping[str, JSON],
        params: Mapping[str, Mapping[str, JSON]],
        systems: Mapping[str, Mapping[str, str]],
        fhir_base: str,
        now: int,
    ) -> None:
        self.studies = {s["id"]: s for s in studies}
        self.patients = dict(patients)
        self.params = params
        self.systems = systems
        self.fhir_base = fhir_base
        self.now = now
        self._values: dict[tuple[str, str, str], list[Node]] = {}
        self._options = {
            "userInvocationTable": {"resolve": {"fn": self._resolve_fn, "arity": {0: []}}},
            "returnRawData": True,
        }

    # -- FHIRPath

    def resolve(self, reference: Any) -> JSON | None:
        """The resource a Reference points to, among those given (only Patients here)."""
        resource_type, resource_id, _ = reference_target(reference, self.fhir_base)
        if resource_type == "Patient" and resource_id in self.patients:
            return self.patients[resource_id]
        return None

    def _resolve_fn(self, inputs: list[Any]) -> list[Any]:
        found = (self.resolve(i) for i in inputs)
        return [_node(r) for r in found if r is not None]

    def expression(self, resource_type: str, code: str) -> str:
        param = self.params[resource_type][code]
        expression = param.get("expression")
        if not expression:
            raise KeyError(f"{resource_type}.{code} has no FHIRPath expression")
        # fhirpathpy does not see an ImagingStudy as a Resource at the root (FHIRPath says
        # `Resource.id` selects the id of any resource), so name the type itself.
        return re.sub(r"(^|\|\s*|\()Resource\.", rf"\g<1>{resource_type}.", str(expression))

    def values(self, resource: JSON, code: str) -> list[Node]:
        """The values the parameter's R4 FHIRPath expression yields on ``resource``.

        The expressions are HL7's, unchanged but for ``Resource.`` (see ``expression``).
        ``resolve()``, which fhirpathpy lacks and ``patient``'s expression
        ``ImagingStudy.subject.where(resolve() is Patient)`` needs, is supplied: it looks the
        reference up among the Patients given to the oracle (read from the server), so
        ``is Patient`` is decided on the resolved resource, not on the reference text."""
        resource_type = resource["resourceType"]
        key = (resource_type, resource["id"], code)
        if key not in self._values:
            parsed = _parsed(self.expression(resource_type, code))
            raw = _apply(resource, parsed, {}, fhirpath_models["r4"], self._options)
            nodes: list[Node] = []
            for item in raw:
                if isinstance(item, ResourceNode):
                    nodes.append((_fhir_type(item.path, item.data), item.data))
                else:
                    nodes.append((_fhir_type(None, item), item))
            self._values[key] = nodes
        return self._values[key]

    # -- searching

    def search(self, pairs: Sequence[tuple[str, str]]) -> Expected:
        """The ImagingStudy ids a search with these (decoded) parameters should return."""
        must = set(self.studies)
        may = set(self.studies)
        for key, raw in pairs:
            if key in CONTROL_PARAMETERS:
                continue
            part = self.criterion("ImagingStudy", list(self.studies.values()), key, raw)
            must &= part.must
            may &= part.may
        return Expected(frozenset(must), frozenset(may))

    def criterion(self, resource_type: str, resources: list[JSON], key: str, raw: str) -> Expected:
        name, _, chain = key.partition(".")
        code, _, modifier = name.partition(":")
        if code not in self.params[resource_type]:
            raise KeyError(f"{resource_type} has no search parameter {code!r}")
        if chain:
            return self._chain(resources, code, modifier, chain, raw)
        must: set[str] = set()
        may: set[str] = set()
        for resource in resources:
            hit_must, hit_may = self._match(resource, code, modifier, raw)
            if hit_must:
                must.add(resource["id"])
            if hit_may:
                may.add(resource["id"])
        return Expected(frozenset(must), frozenset(may))

    def _chain(
        self, resources: list[JSON], code: str, modifier: str, chain: str, raw: str
    ) -> Expected:
        patients = list(self.patients.values())
        inner = self.criterion("Patient", patients, chain, raw)
        must: set[str] = set()
        may: set[str] = set()
        for resource in resources:
            for fhir_type, reference in self.values(resource, code):
                target = self.resolve(reference) if fhir_type == "Reference" else None
                if target is None or (modifier and target["resourceType"] != modifier):
                    continue
                if target["id"] in inner.must:
                    must.add(resource["id"])
                if target["id"] in inner.may:
                    may.add(resource["id"])
        return Expected(frozenset(must), frozenset(may))

    def _match(self, resource: JSON, code: str, modifier: str, raw: str) -> tuple[bool, bool]:
        nodes = self.values(resource, code)
        if modifier == "missing":
            if raw not in ("true", "false"):
                raise ValueError(f":missing takes true or false, not {raw!r}")
            hit = (not nodes) == (raw == "true")
            return hit, hit
        param_type = self.params[resource["resourceType"]][code]["type"]
        alternatives = or_values(raw)
        if param_type == "token":
            if modifier not in ("", "not"):
                raise ValueError(f"token modifier :{modifier} is not modelled")
            system = self.systems.get(resource["resourceType"], {}).get(code)
            pairs = [p for t, v in nodes for p in token_pairs(t, v, system)]
            hit = any(token_matches(parse_token(a), pairs) for a in alternatives)
            hit = not hit if modifier == "not" else hit
            return hit, hit
        if param_type == "reference":
            queries = [parse_reference(a, modifier, self.fhir_base) for a in alternatives]
            hit = any(
                reference_matches(q, value, self.fhir_base)
                for q in queries
                for t, value in nodes
                if t == "Reference"
            )
            return hit, hit
        if param_type == "string":
            if modifier not in ("", "exact", "contains"):
                raise ValueError(f"string modifier :{modifier} is not modelled")
            parts = [p for t, v in nodes for p in string_parts(t, v)]
            hit = any(string_matches(modifier, unescape(a), p) for a in alternatives for p in parts)
            return hit, hit
        if param_type == "date":
            if modifier:
                raise ValueError(f"date modifier :{modifier} is not modelled")
            targets = [r for _, v in nodes if (r := date_range(str(v))) is not None]
            hit_must = hit_may = False
            for alternative in alternatives:
                prefix, text = split_date_prefix(alternative)
                search = date_range(text)
                if search is None:
                    raise ValueError(f"{alternative!r} is not a date")
                if prefix == "ap":
                    inner, outer = approximate(search, self.now)
                    hit_must |= any(t.overlaps(inner) for t in targets)
                    hit_may |= any(t.overlaps(outer) for t in targets)
                else:
                    hit = any(date_matches(prefix, search, t) for t in targets)
                    hit_must |= hit
                    hit_may |= hit
            return hit_must, hit_may
        raise ValueError(f"{param_type} parameters are not modelled")

    # -- sorting

    def sort_value(self, study_id: str, code: str) -> Range | None:
        """The lowest range among the date parameter's values (None if it has none)."""
        ranges = [
            r for _, v in self.values(self.studies[study_id], code) if (r := date_range(str(v)))
        ]
        return min(ranges, key=lambda r: r.low) if ranges else None

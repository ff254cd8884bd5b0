"""The one mapping engine: a mapping file (mappings/<source kind>/<name>.yaml) turns a SourceRecord into FHIR resources.

A mapping lists resources; each has a `type`, an `id` (the source values that identify it, and constants such as
`{const: weight}` to tell apart resources of one type from one record: the resource id is a uuid5 of the source, the
type and those values, so a resend or replay updates the same resource), optionally
`when` (a path that must have a value) and `each` (one resource per segment or repetition), and `content`: the
resource as a template; `fixed` elements every such resource has as written (the content's own win: a follow-up
form's Condition is I10 unless the form names a code); `create_only: true` makes it only if it does not exist yet,
`amend: true` only changes it if it exists (the template's elements replace its own; the rest stays). In a template:

    "PID-5.1"                      a path: the value in the source record (adapters define the path syntax)
    {const: male}                  a constant
    {configured: organization}     an attribute of the configured source (sources.yaml)
    {code: sex, from: PID-8}       a code table lookup (mappings/codes/sex.yaml); an unknown code is an error,
                                   unless `optional: true` (then absent); `default:` when the field is empty
    {fn: hl7_date, args: [PID-7]}  a named function (app/mapping/functions.py)
    {ref: patient}                 a Reference to another resource of this mapping (`refs`: to all of them;
                                   `same: [OBR-3.1]`: to those made where these paths read what they read here)
    {ref: role, id: [.staff_id]}   a Reference to the resource of that key these values identify (its `id` paths read
                                   here): one of several made by `each`, or one another record makes (a renewed
                                   contract's predecessor); it may name a resource not stored yet
    {each: PID-13, as: {...}}      one list item per repetition, paths inside relative to it (".1"); as an item of a
                                   list, its items join that list's (a constant coding, then one per service package)
    merge: {fn: ...}               (a key) the function's object is merged into the enclosing object

An object that reads the source but found no value there (only its constants are left) is dropped, so
"identifier: [{system: {const: X}, value: PID-3.1}]" yields nothing when PID-3 is empty; a reference counts as a
value, since the resource it names was identified by the source. An object or list item written wholly of
constants and configured attributes goes with what holds it: an identifier's constant `type`, `performer:
[{configured: organization_reference}]`, a constant type coding before one per package. Operator keys are not FHIR
element names (`code` is an operator only with `from`), so a template object is never mistaken for one.
"""

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from adapters.base import MessageError, Scope, SourceRecord
from app.config import get_settings
from app.mapping import codes
from app.mapping.functions import FUNCTIONS

_OPERATORS = ("const", "configured", "code", "fn", "ref", "refs", "each")


@dataclass(frozen=True)
class Mapping:
    name: str  # e.g. hl7v2/ADT_A01
    version: str
    kinds: tuple[str, ...]
    resources: tuple[dict[str, Any], ...]
    key: tuple[str, ...] = ()  # the paths naming the source record a row is a version of (export rows)

    @property
    def label(self) -> str:
        return f"{self.name}|{self.version}"


@dataclass
class Produced:
    key: str
    resource_type: str
    resource_id: str
    content: dict[str, Any]
    create_only: bool = False  # made only when it does not exist yet (a result message's Patient)
    amend: bool = False  # only changes an existing resource, element by element (a merge message's merged Patient)


@dataclass
class _Run:
    record: SourceRecord
    source: dict[str, Any]
    types: dict[str, str]
    ids: dict[str, list[str]] = field(default_factory=dict)
    scopes: dict[str, list[Scope]] = field(default_factory=dict)  # the scope each of `ids` was made in


@cache
def mappings(directory: Path | None = None) -> dict[tuple[str, str], Mapping]:
    """Every mapping by (adapter folder, message kind)."""
    folder = directory or get_settings().mappings_dir
    found: dict[tuple[str, str], Mapping] = {}
    for path in sorted(folder.glob("*/*.yaml")):
        if path.parent.name == "codes":
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        mapping = Mapping(f"{path.parent.name}/{path.stem}", str(data["version"]), tuple(data["kinds"]), tuple(data["resources"]),
                          tuple(data.get("key", ())))
        for kind in mapping.kinds:
            found[(path.parent.name, kind)] = mapping
    return found


def find(adapter: str, kind: str, *, where: str = "kind") -> Mapping:
    """The mapping for a kind of record; `where` names the field that carries the kind, for the error."""
    mapping = mappings().get((adapter, kind))
    if mapping is None:
        raise MessageError(f"no mapping for {kind} (supported: {', '.join(kinds(adapter))})", where, "not-supported")
    return mapping


def kinds(adapter: str) -> list[str]:
    return sorted(k for a, k in mappings() if a == adapter)


def record_key(mapping: Mapping, record: SourceRecord) -> str:
    """Which source record the row is (its `key` values), as the inbound log's control id."""
    key = "|".join(_identifying(mapping.key, record.scope, "the record"))
    return key if len(key) <= 64 else uuid.uuid5(uuid.NAMESPACE_URL, key).hex

def apply(mapping: Mapping, record: SourceRecord, source: dict[str, Any]) -> list[Produced]:
    """The resources the mapping makes from the record, in the mapping's order."""
    run = _Run(record, source, {spec["key"]: spec["type"] for spec in mapping.resources})
    planned: list[tuple[dict[str, Any], Scope, str]] = []
    for spec in mapping.resources:
        if spec.get("when") and record.scope.get(spec["when"]) is None:
            continue
        scopes = record.scope.each(spec["each"]) if spec.get("each") else [record.scope]
        for scope in scopes:
            resource_id = _resource_id(spec, scope, source)
            run.ids.setdefault(spec["key"], []).append(resource_id)
            run.scopes.setdefault(spec["key"], []).append(scope)
            planned.append((spec, scope, resource_id))
    produced = []
    for spec, scope, resource_id in planned:
        content, _ = _evaluate(spec["content"], scope, run, spec["type"])
        resource = {"resourceType": spec["type"], "id": resource_id, **spec.get("fixed", {}), **(content or {})}
        produced.append(Produced(spec["key"], spec["type"], resource_id, resource, bool(spec.get("create_only")), bool(spec.get("amend"))))
    return produced


def _resource_id(spec: dict[str, Any], scope: Scope, source: dict[str, Any]) -> str:
    return _uuid(source, spec["type"], _identifying(spec["id"], scope, f"the {spec['type']}"))


def _uuid(source: dict[str, Any], resource_type: str, values: list[str]) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:qiao:{source['name']}:{resource_type}:{'|'.join(values)}"))


def _optional(path: Any, scope: Scope) -> str | None:
    return str(path["const"]) if isinstance(path, dict) else scope.get(path)


def _identifying(paths: Iterable[Any], scope: Scope, what: str) -> list[str]:
    """The values at the paths, each required; a `{const: …}` item is itself (several resources of one type from one
    record: the blood pressure and the weight of one form)."""
    values = []
    for path in paths:
        value = _optional(path, scope)
        if value is None:
            raise MessageError(f"{path} is empty, but it identifies {what}", path, "required")
        values.append(value)
    return values


def _evaluate(template: Any, scope: Scope, run: _Run, where: str) -> tuple[Any, bool]:
    """(value, whether it came from the source). None means absent."""
    if isinstance(template, str):
        value = scope.get(template)
        return value, value is not None
    if isinstance(template, list):
        kept: list[Any] = []
        sourced = False
        for i, item in enumerate(template):
            value, from_source = _evaluate(item, scope, run, f"{where}[{i}]")
            if value is not None:
                kept.extend(value if isinstance(item, dict) and "each" in item else [value])
                sourced = sourced or from_source
        return (kept or None), sourced
    if isinstance(template, dict):
        operator = _operator(template)
        return _OPERATIONS[operator](template, scope, run, where) if operator else _object(template, scope, run, where)
    return template, False  # a number or boolean written in the mapping


def _operator(template: dict[str, Any]) -> str | None:
    """The operation the template object is, or None for an element to build (FHIR has `code` elements too)."""
    operator = next((k for k in _OPERATORS if k in template), None)
    return None if operator == "code" and "from" not in template else operator


def _object(template: dict[str, Any], scope: Scope, run: _Run, where: str) -> tuple[Any, bool]:
    result: dict[str, Any] = {}
    sourced = False
    for key, item in template.items():
        value, from_source = _evaluate(item, scope, run, f"{where}.{key}")
        if value is None:
            continue
        if key == "merge":
            if not isinstance(value, dict):
                raise MessageError(f"mapping error at {where}: merge needs an object")
            result.update(value)
        else:
            result[key] = value
        sourced = sourced or from_source
    if not result or (not sourced and _reads_source(template)):
        return None, False
    return result, sourced


def _reads_source(template: Any) -> bool:
    """Whether the template reads the source record, or is made of constants only (whatever the record says).
    Asked only of an object that found no source value, so it costs the common path nothing."""
    if isinstance(template, str):
        return True
    if isinstance(template, list):
        return any(_reads_source(item) for item in template)
    if not isinstance(template, dict):
        return False
    operator = _operator(template)
    if operator is None:
        return any(_reads_source(item) for item in template.values())
    if operator == "fn":
        return any(_reads_source(argument) for argument in template.get("args", []))
    return operator not in ("const", "configured")


def _constant(template: dict[str, Any], scope: Scope, run: _Run, where: str) -> tuple[Any, bool]:
    return template["const"], False


def _source_attribute(template: dict[str, Any], scope: Scope, run: _Run, where: str) -> tuple[Any, bool]:
    return run.source.get(template["configured"]), False


def _code(template: dict[str, Any], scope: Scope, run: _Run, where: str) -> tuple[Any, bool]:
    table = codes.tables().get(template["code"])
    if table is None:
        raise MessageError(f"mapping error at {where}: no code table {template['code']!r}")
    path = template["from"]
    raw = scope.get(path)
    if raw is None:
        return template.get("default"), False
    translated = table.translate(raw)
    if translated is None and template.get("optional"):
        return None, False
    if translated is None:
        raise MessageError(f"{path}: {raw!r} is not in code table {table.name} ({where})", path, "code-invalid")
    return translated, True


def _function(template: dict[str, Any], scope: Scope, run: _Run, where: str) -> tuple[Any, bool]:
    function = FUNCTIONS.get(template["fn"])
    if function is None:
        raise MessageError(f"mapping error at {where}: no function {template['fn']!r}")
    arguments = [_evaluate(arg, scope, run, where) for arg in template.get("args", [])]
    try:
        value = function(*(a for a, _ in arguments))
    except ValueError as error:
        path = next((a for a in template.get("args", []) if isinstance(a, str)), None)
        raise MessageError(f"{path or where}: {error}", path) from error
    return value, value is not None and any(s for _, s in arguments)


def _reference(template: dict[str, Any], scope: Scope, run: _Run, where: str) -> tuple[Any, bool]:
    key = template.get("ref") or template["refs"]
    if key not in run.types:
        raise MessageError(f"mapping error at {where}: no resource with key {key!r}")
    if "id" in template:
        found = [_optional(path, scope) for path in template["id"]]
        values = [v for v in found if v is not None]
        if len(values) < len(found):
            return None, False
        resource_id = _uuid(run.source, run.types[key], values)
        return {"reference": f"{run.types[key]}/{resource_id}"}, True
    made = list(zip(run.ids.get(key, []), run.scopes.get(key, []), strict=True))
    if "same" in template:  # only those made where these paths read what they read here (the OBX of this OBR)
        here = [_optional(path, scope) for path in template["same"]]
        made = [(i, there) for i, there in made if [_optional(path, there) for path in template["same"]] == here]
    references = [{"reference": f"{run.types[key]}/{i}"} for i, _ in made]
    if "refs" in template:
        return (references or None), bool(references)
    return (references[0] if references else None), bool(references)


def _each(template: dict[str, Any], scope: Scope, run: _Run, where: str) -> tuple[Any, bool]:
    items = [_evaluate(template["as"], inner, run, where) for inner in scope.each(template["each"])]
    kept = [value for value, sourced in items if value is not None and sourced]
    return (kept or None), bool(kept)


_OPERATIONS: dict[str, Callable[[dict[str, Any], Scope, _Run, str], tuple[Any, bool]]] = {
    "const": _constant, "configured": _source_attribute, "code": _code, "fn": _function,
    "ref": _reference, "refs": _reference, "each": _each,
}

"""The one mapping engine: a mapping file (mappings/<source kind>/<name>.yaml) turns a SourceRecord into FHIR resources.

A mapping lists resources; each has a `type`, an `id` (the source values that identify it, and constants such as
`{const: weight}` to tell apart resources of one type from one record: the resource id is a uuid5 of the source, the
type and those values, so a resend or replay updates the same resource), optionally
`when` (a path that must have a value, or a list of paths one of which must) and `each` (one resource per segment or repetition), and `content`: the
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
#: a template compiled: (scope, run) → (value or None when absent, whether the value came from the source)
Compiled = Callable[[Scope, "_Run"], tuple[Any, bool]]


@dataclass(frozen=True)
class Mapping:
    name: str  # e.g. hl7v2/ADT_A01
    version: str
    kinds: tuple[str, ...]
    resources: tuple[dict[str, Any], ...]
    key: tuple[str, ...] = ()  # the paths naming the source record a row is a version of (export rows)
    title: str = ""  # what the source calls the record (a form's name, published with its Questionnaire)
    contents: tuple[Compiled, ...] = ()  # each resource's content template, compiled

    def __post_init__(self) -> None:
        compiled = tuple(compile_template(spec["content"], spec["type"]) for spec in self.resources)
        object.__setattr__(self, "contents", compiled)

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
                          tuple(data.get("key", ())), str(data.get("title") or ""))
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
    planned: list[tuple[dict[str, Any], Compiled, Scope, str]] = []
    for spec, content in zip(mapping.resources, mapping.contents, strict=True):
        if spec.get("when") and not _given(spec["when"], record.scope):
            continue
        scopes = record.scope.each(spec["each"]) if spec.get("each") else [record.scope]
        for scope in scopes:
            resource_id = _resource_id(spec, scope, source)
            run.ids.setdefault(spec["key"], []).append(resource_id)
            run.scopes.setdefault(spec["key"], []).append(scope)
            planned.append((spec, content, scope, resource_id))
    produced = []
    for spec, content, scope, resource_id in planned:
        made, _ = content(scope, run)
        resource = {"resourceType": spec["type"], "id": resource_id, **spec.get("fixed", {}), **(made or {})}
        produced.append(Produced(spec["key"], spec["type"], resource_id, resource, bool(spec.get("create_only")), bool(spec.get("amend"))))
    return produced


def _given(when: str | list[str], scope: Scope) -> bool:
    return any(scope.get(path) is not None for path in ([when] if isinstance(when, str) else when))


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


def compile_template(template: Any, where: str) -> Compiled:
    """Turn a template into nested functions once per mapping: each message then runs them without asking again
    what each template node is."""
    if isinstance(template, str):
        return _path(template)
    if isinstance(template, list):
        return _list([(compile_template(item, f"{where}[{i}]"), isinstance(item, dict) and "each" in item)
                      for i, item in enumerate(template)])
    if isinstance(template, dict):
        operator = _operator(template)
        return _OPERATIONS[operator](template, where) if operator else _object(template, where)
    return _constant({"const": template}, where)  # a number or boolean written in the mapping


def _path(path: str) -> Compiled:
    def read(scope: Scope, run: _Run) -> tuple[Any, bool]:
        value = scope.get(path)
        return value, value is not None
    return read


def _list(items: list[tuple[Compiled, bool]]) -> Compiled:
    def build(scope: Scope, run: _Run) -> tuple[Any, bool]:
        kept: list[Any] = []
        sourced = False
        for item, spreads in items:
            value, from_source = item(scope, run)
            if value is not None:
                kept.extend(value if spreads else [value])
                sourced = sourced or from_source
        return (kept or None), sourced
    return build


def _operator(template: dict[str, Any]) -> str | None:
    """The operation the template object is, or None for an element to build (FHIR has `code` elements too)."""
    operator = next((k for k in _OPERATORS if k in template), None)
    return None if operator == "code" and "from" not in template else operator


def _object(template: dict[str, Any], where: str) -> Compiled:
    elements = [(key, compile_template(item, f"{where}.{key}")) for key, item in template.items()]
    reads_source = _reads_source(template)

    def build(scope: Scope, run: _Run) -> tuple[Any, bool]:
        result: dict[str, Any] = {}
        sourced = False
        for key, element in elements:
            value, from_source = element(scope, run)
            if value is None:
                continue
            if key == "merge":
                if not isinstance(value, dict):
                    raise MessageError(f"mapping error at {where}: merge needs an object")
                result.update(value)
            else:
                result[key] = value
            sourced = sourced or from_source
        if not result or (not sourced and reads_source):
            return None, False
        return result, sourced
    return build


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


def _constant(template: dict[str, Any], where: str) -> Compiled:
    value = template["const"]
    return lambda scope, run: (value, False)


def _source_attribute(template: dict[str, Any], where: str) -> Compiled:
    name = template["configured"]
    return lambda scope, run: (run.source.get(name), False)


def _code(template: dict[str, Any], where: str) -> Compiled:
    name, path, default, optional = template["code"], template["from"], template.get("default"), template.get("optional")

    def translate(scope: Scope, run: _Run) -> tuple[Any, bool]:
        table = codes.tables().get(name)  # looked up each time: a steward may reload the code tables
        if table is None:
            raise MessageError(f"mapping error at {where}: no code table {name!r}")
        raw = scope.get(path)
        if raw is None:
            return default, False
        translated = table.translate(raw)
        if translated is None and optional:
            return None, False
        if translated is None:
            raise MessageError(f"{path}: {raw!r} is not in code table {table.name} ({where})", path, "code-invalid")
        return translated, True
    return translate


def _function(template: dict[str, Any], where: str) -> Compiled:
    function = FUNCTIONS.get(template["fn"])
    arguments = [compile_template(argument, where) for argument in template.get("args", [])]
    path = next((a for a in template.get("args", []) if isinstance(a, str)), None)

    def call(scope: Scope, run: _Run) -> tuple[Any, bool]:
        if function is None:
            raise MessageError(f"mapping error at {where}: no function {template['fn']!r}")
        values = [argument(scope, run) for argument in arguments]
        try:
            value = function(*(a for a, _ in values))
        except ValueError as error:
            raise MessageError(f"{path or where}: {error}", path) from error
        return value, value is not None and any(s for _, s in values)
    return call


def _reference(template: dict[str, Any], where: str) -> Compiled:
    key = template.get("ref") or template["refs"]
    many = "refs" in template

    def refer(scope: Scope, run: _Run) -> tuple[Any, bool]:
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
        if many:
            return (references or None), bool(references)
        return (references[0] if references else None), bool(references)
    return refer


def _each(template: dict[str, Any], where: str) -> Compiled:
    path, item = template["each"], compile_template(template["as"], where)

    def repeat(scope: Scope, run: _Run) -> tuple[Any, bool]:
        kept = [value for value, sourced in (item(inner, run) for inner in scope.each(path)) if value is not None and sourced]
        return (kept or None), bool(kept)
    return repeat


_OPERATIONS: dict[str, Callable[[dict[str, Any], str], Compiled]] = {
    "const": _constant, "configured": _source_attribute, "code": _code, "fn": _function,
    "ref": _reference, "refs": _reference, "each": _each,
}

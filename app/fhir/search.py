"""Query string → SearchRequest (pure). Unknown parameters are errors, or ignored under Prefer: handling=lenient."""

from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo

from app.errors import InvalidRequest
from app.fhir import resources
from app.store.dates import BadDate, date_range
from app.store.search_parameters import SPECIAL, parameter, parameter_type

DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"not", "missing", "text"},
    "date": {"missing"},
    "reference": {"missing", "mdm"},
}


@dataclass(frozen=True)
class Criterion:
    """One query parameter: its values are OR-ed; criteria are AND-ed. `chain` searches the referenced resources."""

    name: str
    type: str
    values: tuple[str, ...]
    modifier: str | None = None
    target_type: str | None = None
    chain: "Criterion | None" = None


@dataclass(frozen=True)
class Include:
    source_type: str  # "*" for any
    parameter: str
    target_type: str | None = None


@dataclass
class SearchRequest:
    resource_type: str
    criteria: list[Criterion] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (parameter, descending)
    count: int = 20
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    summary: Literal["count", "false"] | None = None
    total: Literal["none", "estimate", "accurate"] | None = None
    elements: tuple[str, ...] = ()
    cursor: str | None = None
    #: This server's base URL as the client sees it: absolute references to it are local references.
    base_url: str = ""
    #: (name, value) pairs that were applied, for self and next links.
    applied: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def parse(
    resource_type: str,
    params: list[tuple[str, str]],
    *,
    lenient: bool = False,
    default_count: int = 20,
    max_count: int = 1000,
) -> SearchRequest:
    request = SearchRequest(resource_type, count=default_count)
    for key, value in params:
        try:
            applied = _apply(request, key, value, max_count)
        except UnknownParameter:
            # lenient handling drops what the server does not know; a known parameter with a bad value stays an error
            if not lenient:
                raise
            request.ignored.append(key)
            continue
        if applied:
            request.applied.append((key, value))
    return request


def _apply(request: SearchRequest, key: str, value: str, max_count: int) -> bool:
    """Apply one parameter; False when it does not shape the result (paging cursor, format, an empty value)."""
    if key == "_count":
        count = _integer(key, value)
        if count < 0:
            raise InvalidRequest("_count must not be negative", expression=["_count"])
        request.count = min(count, max_count)
    elif key == "_sort":
        request.sort = [_sort_key(request.resource_type, item) for item in value.split(",") if item]
    elif key in ("_include", "_revinclude"):
        include = _include(request.resource_type, key, value)
        (request.includes if key == "_include" else request.revincludes).append(include)
    elif key == "_summary":
        if value not in ("count", "false"):
            raise UnknownParameter(f"_summary={value} is not supported (count, false)", expression=["_summary"])
        request.summary = value  # type: ignore[assignment]
    elif key == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise InvalidRequest(f"_total must be none, estimate or accurate, not {value!r}", expression=["_total"])
        request.total = value  # type: ignore[assignment]
    elif key == "_elements":
        request.elements = tuple(item.strip() for item in value.split(",") if item.strip())
    elif key == "_cursor":
        request.cursor = value
        return False
    elif key in ("_format", "_pretty"):
        return False
    else:
        found = criterion(request.resource_type, key, value)
        if found is None:  # "parameters with empty values are ignored" (FHIR search 3.1.1.3)
            return False
        request.criteria.append(found)
    return True


class UnknownParameter(InvalidRequest):
    """A parameter, modifier or include the server does not support: ignored under Prefer: handling=lenient."""


def _integer(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidRequest(f"{key} must be an integer, not {value!r}", expression=[key]) from None


def criterion(resource_type: str, key: str, value: str) -> Criterion | None:
    """`subject:Patient.identifier=sys|val` → Criterion('subject', chain=Criterion('identifier', ...)); None if empty."""
    name, dot, rest = key.partition(".")
    name, _, modifier = name.partition(":")
    kind = parameter_type(resource_type, name)
    if kind is None:
        raise UnknownParameter(f"unknown search parameter {name!r} for {resource_type}", expression=[key])
    if dot:
        if kind != "reference":
            raise InvalidRequest(f"{name} is not a reference parameter and cannot be chained", expression=[key])
        found = parameter(resource_type, name)
        target = modifier or (found.target if found else None)
        if not target or not resources.is_resource_type(target):
            raise InvalidRequest(f"chained search on {name} needs a target type, e.g. {name}:Patient.{rest}", expression=[key])
        chain = criterion(target, rest, value)
        return Criterion(name, kind, (), target_type=target, chain=chain) if chain else None
    values = tuple(_split_values(value))
    if not values:
        return None
    if modifier:
        if kind == "reference" and resources.is_resource_type(modifier):
            return Criterion(name, kind, values, target_type=modifier)
        if modifier not in MODIFIERS.get(kind, set()) or name in SPECIAL and modifier == "missing":
            raise UnknownParameter(f"modifier :{modifier} is not supported on {kind} parameter {name}", expression=[key])
        if modifier == "missing" and value not in ("true", "false"):
            raise InvalidRequest(f"{key} must be true or false", expression=[key])
        if modifier == "mdm" and any("/" in item and not item.startswith("Patient/") for item in values):
            raise InvalidRequest(f"{key}: :mdm expands a resident, so its values are Patients", expression=[key])
    if kind == "date":
        for item in values:
            _check_date(key, item)
    return Criterion(name, kind, values, modifier=modifier or None)


def _split_values(value: str) -> list[str]:
    """Split on commas not escaped with a backslash; unescape \\, \\| and \\$."""
    parts, current, escaped = [], [], False
    for ch in value:
        if escaped:
            current.append(ch if ch in ",$|\\" else "\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [part for part in parts if part != ""]


def split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in DATE_PREFIXES and not value[:2].isdigit():
        return value[:2], value[2:]
    return "eq", value


def _check_date(key: str, value: str) -> None:
    try:
        date_range(split_prefix(value)[1], ZoneInfo("UTC"))
    except BadDate:
        raise InvalidRequest(f"{key}: {value!r} is not a date (e.g. ge2024-01-01)", expression=[key]) from None


def _sort_key(resource_type: str, item: str) -> tuple[str, bool]:
    descending = item.startswith("-")
    name = item.lstrip("-")
    kind = parameter_type(resource_type, name)
    if kind not in ("token", "string", "date"):
        raise InvalidRequest(f"cannot sort {resource_type} by {name!r}", expression=["_sort"])
    return name, descending


def _include(resource_type: str, key: str, value: str) -> Include:
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise InvalidRequest(f"{key} must be Type:parameter[:TargetType], not {value!r}", expression=[key])
    source, name = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if source != "*" and not resources.is_resource_type(source):
        raise InvalidRequest(f"{key}: unknown resource type {source!r}", expression=[key])
    if key == "_include" and source not in ("*", resource_type):
        raise InvalidRequest(f"_include must start with {resource_type}, not {source}", expression=[key])
    if source != "*" and parameter_type(source, name) != "reference":
        raise UnknownParameter(f"{key}: {source} has no reference parameter {name!r}", expression=[key])
    return Include(source, name, target)

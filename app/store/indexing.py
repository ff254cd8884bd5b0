"""Resource → search index rows (pure: no database)."""

import re
import unicodedata
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

from app.store import dates
from app.store.search_parameters import SearchParameter, is_form_of, parameters_for

IndexRows = dict[str, list[dict[str, Any]]]
_REFERENCE = re.compile(r"^(?:.*/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
MAX_STRING = 255


def normalise(value: str) -> str:
    """Case- and accent-insensitive form used by string search (Chinese characters are kept as they are)."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold().strip()[:MAX_STRING]


def values_at(node: Any, path: str) -> list[Any]:
    """Every value at a dot path of FHIR JSON, lists flattened; a segment also matches its choice forms (effective →
    effectivePeriod). Level by level rather than recursively: an AuditEvent's thousand entities are a thousand
    generators otherwise."""
    nodes = node if isinstance(node, list) else [node]
    for head in path.split(".") if path else ():
        found: list[Any] = []
        for item in nodes:
            if isinstance(item, dict):
                for key, value in item.items():
                    if not is_form_of(key, head):
                        continue
                    if isinstance(value, list):
                        found.extend(value)
                    else:
                        found.append(value)
        nodes = found
    return nodes


def parse_reference(reference: str, base_url: str = "") -> tuple[str, str] | None:
    """'Patient/1', an absolute URL on this server, or '.../Patient/1/_history/2' → (type, id); other URLs → ('', url)."""
    if base_url and reference.startswith(base_url.rstrip("/") + "/"):
        reference = reference[len(base_url.rstrip("/")) + 1 :]
    if reference.startswith(("urn:", "#")):
        return None
    match = _REFERENCE.match(reference)
    if match and "://" not in reference:
        return match["type"], match["id"]
    if "://" in reference:
        return "", reference[:MAX_STRING]
    return None


def token_values(value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, bool):
        yield "", "true" if value else "false"
    elif isinstance(value, str):
        yield "", value
    elif isinstance(value, dict):
        if "coding" in value:
            for coding in value["coding"]:
                yield from token_values(coding)
        elif "code" in value:
            yield value.get("system", ""), str(value["code"])
        elif "value" in value:
            yield value.get("system", ""), str(value["value"])
        elif "url" in value:  # an extension: its value
            for key, item in value.items():
                if key.startswith("value"):
                    yield from token_values(item)


def string_values(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        if "family" in value or "given" in value:
            yield from _name_forms(value)
        for key in ("text", "line", "city", "district", "state", "postalCode", "country", "prefix", "suffix"):
            item = value.get(key)
            if isinstance(item, list):
                yield from (v for v in item if isinstance(v, str))
            elif isinstance(item, str):
                yield item


def _name_forms(name: dict[str, Any]) -> Iterator[str]:
    """Family, each given, and the whole name: 张伟 for Chinese names; ZHANG WEI and WEI ZHANG for romanised ones."""
    family = name.get("family") or ""
    given = [g for g in name.get("given") or [] if isinstance(g, str)]
    if family:
        yield family
    yield from given
    if family and given:
        if _CJK.search(family + "".join(given)):
            yield family + "".join(given)
        else:
            yield " ".join([family, *given])
            yield " ".join([*given, family])


def date_values(value: Any, zone: ZoneInfo) -> Iterator[tuple[int, int]]:
    try:
        if isinstance(value, str):
            yield dates.date_range(value, zone)
        elif isinstance(value, dict) and ("start" in value or "end" in value):
            low = dates.date_range(value["start"], zone)[0] if "start" in value else dates.MIN_MICROS
            high = dates.date_range(value["end"], zone)[1] if "end" in value else dates.MAX_MICROS
            yield low, high
    except dates.BadDate:
        return


def _matches_where(value: Any, parameter: SearchParameter) -> bool:
    return not parameter.where or (isinstance(value, dict) and all(value.get(k) == v for k, v in parameter.where))


def index_rows(resource: dict[str, Any], *, zone: ZoneInfo, base_url: str = "") -> IndexRows:
    """The rows of every index table for one resource (without resource_pk, which the store adds)."""
    resource_type = resource["resourceType"]
    rows: IndexRows = {"token": [], "string": [], "date": [], "reference": []}
    for parameter in parameters_for(resource_type).values():
        seen: set[Any] = set()
        for forms, rest in parameter.paths:
            for value in _element_values(resource, forms, rest):
                if not _matches_where(value, parameter):
                    continue
                for row in _rows_for(parameter, value, zone, base_url):
                    key = tuple(row.values())
                    if key not in seen:
                        seen.add(key)
                        rows[parameter.type].append({"res_type": resource_type, "param": parameter.name, **row})
    return rows


def _element_values(resource: dict[str, Any], forms: tuple[str, ...], rest: str) -> Iterator[Any]:
    """Every value at `rest` under the resource's element, by whichever of its JSON names (`forms`) it has."""
    for name in forms:
        if name in resource:
            yield from values_at(resource[name], rest)


def _rows_for(parameter: SearchParameter, value: Any, zone: ZoneInfo, base_url: str) -> Iterator[dict[str, Any]]:
    if parameter.type == "token":
        for system, code in token_values(value):
            yield {"system": system[:MAX_STRING], "code": code[:MAX_STRING]}
    elif parameter.type == "string":
        for text in string_values(value):
            if text.strip():
                yield {"value_norm": normalise(text), "value_exact": text[:MAX_STRING]}
    elif parameter.type == "date":
        for low, high in date_values(value, zone):
            yield {"low": low, "high": high}
    elif parameter.type == "reference" and isinstance(value, dict) and isinstance(value.get("reference"), str):
        target = parse_reference(value["reference"], base_url)
        if target and (parameter.target is None or target[0] == parameter.target):
            yield {"target_type": target[0], "target_id": target[1]}

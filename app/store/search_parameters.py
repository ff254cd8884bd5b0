"""The registry of search parameters, read from search_parameters.yaml and fitted to each resource type's model."""

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from app.fhir import resources

REGISTRY_FILE = Path(__file__).with_name("search_parameters.yaml")
#: Built in: served from the resource row, not the index.
SPECIAL = {"_id": "token", "_lastUpdated": "date"}


@dataclass(frozen=True)
class SearchParameter:
    """`paths` each as the JSON names its first element takes in the resource type (itself, or its choice forms:
    effective → effectiveDateTime, effectivePeriod, …) and the rest of the path, so that indexing a resource looks
    its elements up instead of comparing every key of it with every path."""

    name: str
    type: str  # token | string | date | reference
    paths: tuple[tuple[tuple[str, ...], str], ...]
    target: str | None = None
    where: tuple[tuple[str, str], ...] = field(default=())


@cache
def _registry() -> dict[str, Any]:
    return yaml.safe_load(REGISTRY_FILE.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def is_form_of(name: str, head: str) -> bool:
    """Whether a JSON name is the element `head` or one of its choice forms (effective → effectiveDateTime)."""
    return name == head or (name.startswith(head) and name[len(head) : len(head) + 1].isupper())


def _forms(elements: frozenset[str], head: str) -> tuple[str, ...]:
    return tuple(sorted(name for name in elements if is_form_of(name, head)))


def _make(name: str, spec: dict[str, Any], elements: frozenset[str]) -> SearchParameter | None:
    split = [path.partition(".") for path in spec["path"]]
    paths = tuple((forms, rest) for head, _, rest in split if (forms := _forms(elements, head)))
    if not paths:
        return None
    where = tuple(sorted((spec.get("where") or {}).items()))
    return SearchParameter(name, spec["type"], paths, spec.get("target"), where)


@cache
def parameters_for(resource_type: str) -> dict[str, SearchParameter]:
    """The indexed search parameters of a resource type, by name."""
    elements = resources.element_names(resource_type)
    registry = _registry()
    found: dict[str, SearchParameter] = {}
    for name, spec in {**registry["common"], **registry["types"].get(resource_type, {})}.items():
        parameter = _make(name, spec, elements)
        if parameter is not None:
            found[name] = parameter
    return found


def parameter(resource_type: str, name: str) -> SearchParameter | None:
    return parameters_for(resource_type).get(name)


def parameter_type(resource_type: str, name: str) -> str | None:
    if name in SPECIAL:
        return SPECIAL[name]
    found = parameter(resource_type, name)
    return found.type if found else None

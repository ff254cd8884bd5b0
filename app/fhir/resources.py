"""The only module that imports fhir.resources.

fhir.resources 8 ships R4B, R5 and STU3 models but no R4 package; R4 resources validate under R4B (the wire
version stays 4.0.1). Model classes are imported lazily per type: importing all of them takes seconds.
"""

import pkgutil
from functools import cache
from pathlib import Path
from typing import Any

import fhir.resources.R4B as r4b
import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from app.errors import InvalidResource, Issue

FHIR_VERSION = "4.0.1"
MODEL_PACKAGE = "fhir.resources.R4B"
ELEMENTS_FILE = Path(__file__).with_name("resource_elements.json")

# pydantic error type → FHIR issue type (https://hl7.org/fhir/R4/valueset-issue-type.html)
_ISSUE_TYPES = {
    "missing": "required",
    "extra_forbidden": "structure",
    "value_error": "value",
    "string_pattern_mismatch": "value",
    "string_too_short": "value",
    "literal_error": "code-invalid",
    "enum": "code-invalid",
}


@cache
def model_class(resource_type: str) -> type[Any] | None:
    """The model class of a resource type, or None when it is not a FHIR resource."""
    if not resource_type[:1].isupper() or not resource_type.isalnum():
        return None
    try:
        cls = get_fhir_model_class(resource_type)
    except (ValueError, ImportError):
        return None
    fields = getattr(cls, "model_fields", {})
    return cls if "id" in fields and "meta" in fields and "implicitRules" in _aliases(cls) else None


def is_resource_type(resource_type: str) -> bool:
    return resource_type in _elements()


def resource_types() -> tuple[str, ...]:
    """The concrete resource types the models know."""
    return tuple(_elements())


def element_names(resource_type: str) -> frozenset[str]:
    """JSON names of the top-level elements of a resource type (choice elements with their type suffix)."""
    return _elements().get(resource_type, frozenset())


@cache
def _elements() -> dict[str, frozenset[str]]:
    """Each resource type's element names, from a file kept beside this module (ELEMENTS_FILE): finding them in the
    models imports every model class, which costs a server process 80 MiB and its first CapabilityStatement 2 s.
    `python -m app.fhir.resources` writes it again after an upgrade of fhir.resources; a test keeps it equal."""
    found = orjson.loads(ELEMENTS_FILE.read_bytes())
    return {resource_type: frozenset(names) for resource_type, names in found.items()}


def model_elements() -> dict[str, list[str]]:
    """Each concrete resource type's element names, found by importing every model class."""
    found: dict[str, list[str]] = {}
    for module in pkgutil.iter_modules(r4b.__path__):
        if module.name.startswith("_") or module.name in ("fhirtypes", "fhirtypesvalidators"):
            continue
        cls_name = _class_name(module.name)
        if cls_name is None or cls_name in ("Resource", "DomainResource"):
            continue
        cls = model_class(cls_name)
        if cls is not None:
            found[cls_name] = sorted(_aliases(cls))
    return dict(sorted(found.items()))


def _class_name(module_name: str) -> str | None:
    module = __import__(f"{MODEL_PACKAGE}.{module_name}", fromlist=["*"])
    for name in dir(module):
        if name.lower() == module_name:
            return name
    return None


@cache
def required_elements(resource_type: str) -> frozenset[str]:
    """JSON names of the top-level elements a resource of this type must have (cardinality 1..)."""
    cls = model_class(resource_type)
    if cls is None:
        return frozenset()
    return frozenset(
        field.alias or name for name, field in cls.model_fields.items()
        if field.is_required() or (isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("element_required"))
    )


def _aliases(cls: Any) -> set[str]:
    return {field.alias or name for name, field in cls.model_fields.items()}


def validate(resource: dict[str, Any]) -> None:
    """Raise InvalidResource, one issue per problem with its FHIRPath-like location, if the resource is invalid."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        raise InvalidResource("resource has no resourceType", expression=["resourceType"])
    cls = model_class(resource_type)
    if cls is None:
        raise InvalidResource(f"unknown resource type {resource_type!r}", expression=["resourceType"])
    try:
        cls.model_validate(resource)
    except ValidationError as exc:
        issues = [
            Issue(
                "error",
                _ISSUE_TYPES.get(error["type"], "structure"),
                f"{error['msg']}",
                [location(resource_type, error["loc"])],
            )
            for error in exc.errors(include_url=False, include_input=False)
        ]
        raise InvalidResource(f"invalid {resource_type}", issues=issues) from None
    except (ValueError, TypeError) as exc:
        raise InvalidResource(f"invalid {resource_type}: {exc}", expression=[resource_type]) from None


def location(resource_type: str, loc: tuple[int | str, ...]) -> str:
    """('name', 0, 'family') → Patient.name[0].family"""
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part and not part.startswith("function-") and part != "__root__":
            path += f".{part}"
    return path


if __name__ == "__main__":
    lines = [f'  "{name}": {orjson.dumps(elements).decode()}' for name, elements in model_elements().items()]
    ELEMENTS_FILE.write_text("{\n" + ",\n".join(lines) + "\n}\n")

"""The only module that imports fhir.resources.

fhir.resources 8 ships R4B, R5 and STU3 models but no R4 package; R4 resources validate under R4B (the wire
version stays 4.0.1). Model classes are imported lazily per type: importing all of them takes seconds.

Validation remembers shapes. What the models check of a resource beyond its primitive values (which elements,
nested how, nulls and choice elements, which resource type sits where) depends only on its shape: its keys, their
nesting, each list's length, each value's JSON type and each `resourceType`. A resource whose shape once passed in
full needs only its primitive values checked, each by its own element's pydantic type: an adapter's ORU^R01 is
twelve resources of a few shapes, and the full models took a fifth of its processing. Anything the leaf checks
refuse is validated in full, so errors read the same either way.
"""

import pkgutil
import types
import typing
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import fhir.resources.R4B as r4b
import orjson
from fhir.resources.R4B import get_fhir_model_class
from fhir_core.types import FhirElementOrResourceBase
from pydantic import TypeAdapter, ValidationError

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

SHAPES_KEPT = 1024  # shapes remembered; when full they are forgotten and learnt again (a sender's messages make dozens)
SHAPE_TOKENS = 2000  # a larger shape (an ORU's Observation: ~100) is validated in full each time: ~16 MB at most


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
    shape, values = shape_of(resource)
    checks = _shapes.get(shape)
    if checks is not None and _passes(checks, values):
        return
    _validate_in_full(cls, resource)
    if checks is None and len(shape) <= SHAPE_TOKENS:
        _remember(shape, cls, resource)


def _validate_in_full(cls: type[Any], resource: dict[str, Any]) -> None:
    resource_type = resource["resourceType"]
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


# --- shapes ----------------------------------------------------------------------------------------------------

Check = Callable[[Any], Any]  # raises when the value does not fit its element's type
_OPEN, _CLOSE, _LIST, _END = object(), object(), object(), object()
_shapes: dict[tuple[Any, ...], list[Check]] = {}  # plain dict operations: safe across the server's threads


def shape_of(resource: dict[str, Any]) -> tuple[tuple[Any, ...], list[Any]]:
    """The resource's shape (hashable) and its primitive values, depth first: the order `_model_checks` follows."""
    tokens: list[Any] = []
    values: list[Any] = []
    _walk(resource, tokens, values)
    return tuple(tokens), values


def _walk(value: Any, tokens: list[Any], values: list[Any]) -> None:
    if type(value) is dict:
        tokens.append(_OPEN)
        for key, item in value.items():
            tokens.append(key)
            if _names_a_type(key, item):
                tokens.append((item,))  # the type is part of the shape, not a value
            else:
                _walk(item, tokens, values)
        tokens.append(_CLOSE)
    elif type(value) is list:
        tokens.append(_LIST)
        for item in value:
            _walk(item, tokens, values)
        tokens.append(_END)
    else:
        tokens.append(type(value))
        values.append(value)


def _names_a_type(key: str, value: Any) -> bool:
    """A `resourceType`: part of the shape, so neither a value nor checked (`_walk` and `_model_checks` agree)."""
    return key == "resourceType" and type(value) is str


def _passes(checks: list[Check], values: list[Any]) -> bool:
    try:
        for check, value in zip(checks, values, strict=True):
            check(value)
    except (ValidationError, ValueError, TypeError):
        return False
    return True


def _remember(shape: tuple[Any, ...], cls: type[Any], resource: dict[str, Any]) -> None:
    """Keep the checks of a shape that just passed in full; a shape whose parts are not all plain models,
    lists of them and primitives (a model given as a JSON string, comments) is validated in full each time."""
    checks: list[Check] = []
    if _model_checks(cls, resource, checks):
        if len(_shapes) >= SHAPES_KEPT:
            _shapes.clear()
        _shapes[shape] = checks


def _model_checks(cls: Any, value: Any, checks: list[Check]) -> bool:
    if type(value) is not dict:
        return False
    elements = _element_types(cls)
    for key, item in value.items():
        if _names_a_type(key, item):
            continue
        element = elements.get(key)
        if element is None:
            return False
        repeats, kind = element
        if repeats and type(item) is list:
            if not all(_value_checks(kind, each, checks) for each in item):
                return False
        elif repeats or not _value_checks(kind, item, checks):
            return False
    return True


def _value_checks(kind: Any, value: Any, checks: list[Check]) -> bool:
    if value is None:
        checks.append(_accept)  # a null the full validation let stand in this place
        return True
    if isinstance(kind, TypeAdapter):
        if type(value) in (dict, list):
            return False
        checks.append(kind.validate_python)
        return True
    if kind is None:
        return False
    polymorphic, cls = kind
    if polymorphic:  # Resource (contained, Bundle.entry.resource): the value's resourceType names its model
        named = value.get("resourceType") if type(value) is dict else None
        cls = model_class(named) if isinstance(named, str) else None
        if cls is None:
            return False
    return _model_checks(cls, value, checks)


def _accept(_value: Any) -> None:
    return None


@cache
def _element_types(cls: Any) -> dict[str, tuple[bool, Any]]:
    """Each element of a model, by JSON name and by field name: (repeats, kind), kind being a TypeAdapter of a
    primitive, (polymorphic, model class), or None for what is not checked leaf by leaf."""
    found: dict[str, tuple[bool, Any]] = {}
    for name, field in cls.model_fields.items():
        element = _element_type(field.annotation)
        found[name] = element
        if field.alias:
            found[field.alias] = element
    return found


def _element_type(annotation: Any) -> tuple[bool, Any]:
    annotation = _without_none(annotation)
    repeats = typing.get_origin(annotation) in (list, typing.List)  # noqa: UP006 (the models use typing.List)
    if repeats:
        annotation = _without_none(typing.get_args(annotation)[0])
    if annotation is None:
        return repeats, None
    model = getattr(annotation, "get_model_klass", None)
    if model is not None:
        return repeats, (_is_polymorphic(annotation), model())
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        return repeats, None
    return repeats, TypeAdapter(annotation)


def _without_none(annotation: Any) -> Any:
    """X from Optional[X] (None for a union of several types)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        return members[0] if len(members) == 1 else None
    return annotation


def _is_polymorphic(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, FhirElementOrResourceBase)


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

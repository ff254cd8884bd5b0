"""Validation by remembered shape (app/fhir/resources.py) accepts exactly what the full models accept.

The corpus is every resource the golden mapping cases make (patients, encounters, observations, questionnaire
responses, contracts...), plus a Bundle and a resource with a contained one. Each is validated once so that its
shape is remembered; then one of its primitive values is changed (same JSON type: the shape stays, only the leaf
checks decide) or its shape is changed, and `validate` must raise exactly when the model itself refuses.
"""

import copy
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import InvalidResource
from app.fhir import resources
from tests.mappings.test_golden import CASES

CORPUS = [
    item["resource"]
    for path in sorted(CASES.glob("*/*/*.expected.json"))
    for item in orjson.loads(path.read_bytes())
    if not item.get("amend")
] + [
    {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:4a1b7c2e-0d3f-4e5a-9b6c-7d8e9f0a1b2c",
         "resource": {"resourceType": "Patient", "id": "p1", "birthDate": "1960-04-01", "gender": "female"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
                      "valueQuantity": {"value": 120, "unit": "mm[Hg]"}, "effectiveDateTime": "2026-01-02T08:00:00+08:00"}},
    ]},
    {"resourceType": "Patient", "id": "with-contained", "contained": [{"resourceType": "Organization", "id": "o1", "name": "x"}],
     "managingOrganization": {"reference": "#o1"}, "name": [{"given": ["A", None], "_given": [None, {"extension": [
         {"url": "http://example.org/x", "valueString": "y"}]}]}]},
]

# primitive values of the kinds FHIR's types disagree on: empty, spaced, dates real and not, numbers out of range
STRINGS = st.sampled_from([
    "", " ", " a", "a ", "a  b", "x", "final", "female", "bogus", "1960", "1960-13-01", "1960-02-30", "1960-04-01",
    "2026-01-02T08:00:00", "2026-01-02T08:00:00+08:00", "2026-01-02T25:00:00+08:00", "12:00:00", "-1", "0", "1.50",
    "01", "Patient/1", "urn:uuid:x", "a\tb", "http://loinc.org", "8480-6", "id with space", "a" * 70, "高血压",
]) | st.text(max_size=12)
INTEGERS = st.sampled_from([0, -1, 1, 2**31, -(2**31) - 1, 2**63]) | st.integers()
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
SCALARS = st.none() | st.booleans() | INTEGERS | FLOATS | STRINGS | st.just({}) | st.just([])


def _full_model_accepts(resource: dict[str, Any]) -> bool:
    cls = resources.model_class(resource["resourceType"])
    assert cls is not None
    try:
        cls.model_validate(resource)
    except (ValueError, TypeError):
        return False
    return True


def _validate_accepts(resource: dict[str, Any]) -> bool:
    try:
        resources.validate(resource)
    except InvalidResource:
        return False
    return True


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, dict):
        return [leaf for key, item in value.items() if key != "resourceType" for leaf in _leaves(item, (*path, key))]
    if isinstance(value, list):
        return [leaf for i, item in enumerate(value) for leaf in _leaves(item, (*path, i))]
    return [(path, value)]


def _replaced(resource: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(resource)
    node = changed
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return changed


def _same_type(draw: Any, old: Any) -> Any:
    if isinstance(old, bool):
        return draw(st.booleans())
    if isinstance(old, int):
        return draw(INTEGERS)
    if isinstance(old, float):
        return draw(FLOATS)
    if isinstance(old, str):
        return draw(STRINGS)
    return draw(SCALARS)


@st.composite
def mutations(draw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    resource = draw(st.sampled_from(CORPUS))
    path, old = draw(st.sampled_from(_leaves(resource)))
    new = _same_type(draw, old) if draw(st.booleans()) else draw(SCALARS)
    return resource, _replaced(resource, path, new)


def test_every_corpus_resource_is_valid_and_its_shape_is_remembered() -> None:
    for resource in CORPUS:
        resources.validate(resource)
        shape, values = resources.shape_of(resource)
        assert len(resources._shapes[shape]) == len(values), resource["resourceType"]  # one check per value


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutations())
def test_a_remembered_shape_accepts_exactly_what_the_models_accept(case: tuple[dict[str, Any], dict[str, Any]]) -> None:
    original, changed = case
    resources.validate(original)  # its shape is remembered now
    assert _validate_accepts(changed) == _full_model_accepts(changed), changed


@pytest.mark.parametrize(("path", "value"), [
    (("birthDate",), "1960-02-30"),
    (("gender",), "female "),
    (("id",), "id with space"),
])
def test_a_bad_value_in_a_remembered_shape_is_refused_with_the_models_own_error(path: tuple[str, ...], value: str) -> None:
    good = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1960-04-01"}
    resources.validate(good)
    with pytest.raises(InvalidResource) as refused:
        resources.validate(_replaced(good, path, value))
    assert refused.value.issues[0].expression == [f"Patient.{path[0]}"]

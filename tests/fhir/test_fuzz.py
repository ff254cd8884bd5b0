"""Property tests: no search or write, however malformed, makes the server answer 500."""

from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.builders import FHIR_JSON

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

NAMES = st.sampled_from([
    "name", "family", "birthdate", "identifier", "gender", "_id", "_lastUpdated", "subject", "patient", "code", "date",
    "_count", "_sort", "_include", "_revinclude", "_summary", "_total", "_elements", "_cursor",
    "subject:Patient.identifier", "patient.name", "organization.name", "link", "unknown",
])
MODIFIERS = st.sampled_from(["", ":exact", ":contains", ":missing", ":not", ":Patient", ":text", ":weird"])
VALUES = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30) | st.sampled_from(
    ["ge2020", "lt1980-05", "eq", "ap2020-01-01T10:00", "a|b", "|", "Patient/1", "true", "-5", "0",
     "Patient:organization", "*:subject", "2020-13-45", "\\,", ","]
)
TYPES = st.sampled_from(["Patient", "Observation", "Task", "Group", "Nope", "metadata", "_history"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
BODIES = st.dictionaries(
    st.sampled_from(["resourceType", "id", "name", "birthDate", "entry", "type", "meta", "subject", "status", "code", "x"]),
    JSON,
    max_size=5,
)


@FUZZ
@given(resource_type=TYPES, params=st.lists(st.tuples(NAMES, MODIFIERS, VALUES), max_size=4))
def test_search_never_fails_with_500(client: TestClient, resource_type: str, params: list[tuple[str, str, str]]) -> None:
    response = client.get(f"/fhir/{resource_type}", params=[(name + modifier, value) for name, modifier, value in params])
    assert response.status_code < 500, (resource_type, params, response.text)
    assert response.json()["resourceType"] in ("Bundle", "OperationOutcome", "CapabilityStatement")


@FUZZ
@given(resource_type=st.sampled_from(["Patient", "Observation", "Bundle"]), body=BODIES)
def test_writes_never_fail_with_500(client: TestClient, resource_type: str, body: dict[str, Any]) -> None:
    for method, url in (("POST", f"/fhir/{resource_type}"), ("PUT", f"/fhir/{resource_type}/a1"), ("POST", "/fhir")):
        response = client.request(method, url, json=body, headers=FHIR_JSON)
        assert response.status_code < 500, (method, url, body, response.text)

"""Every failure answers an OperationOutcome that says what is wrong and where."""

from fastapi.testclient import TestClient

from app.config import get_settings
from app.fhir import resources
from tests.builders import FHIR_JSON, patient


def outcome(response) -> dict:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]


def test_invalid_resource_names_the_element(client: TestClient) -> None:
    response = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": 1}], "nickname": "x"}, headers=FHIR_JSON)
    assert response.status_code == 400
    expressions = {e for issue in response.json()["issue"] for e in issue["expression"]}
    assert {"Patient.name[0].family", "Patient.nickname"} <= expressions
    assert client.get("/fhir/Patient?_summary=count").json()["total"] == 0


def test_wrong_type_in_body(client: TestClient) -> None:
    response = client.post("/fhir/Patient", json={"resourceType": "Observation"}, headers=FHIR_JSON)
    assert response.status_code == 400
    assert outcome(response)["expression"] == ["resourceType"]


def test_unknown_type_is_404(client: TestClient) -> None:
    assert outcome(client.get("/fhir/Nonsense/1"))["code"] == "not-found"
    assert client.post("/fhir/Nonsense", json={"resourceType": "Nonsense"}, headers=FHIR_JSON).status_code == 404


def test_unknown_id_is_404(client: TestClient) -> None:
    response = client.get("/fhir/Patient/nobody")
    assert response.status_code == 404
    assert outcome(response)["code"] == "not-found"


def test_wrong_content_type_is_415(client: TestClient) -> None:
    response = client.post("/fhir/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"})
    assert response.status_code == 415
    assert outcome(response)["expression"] == ["Content-Type"]


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post("/fhir/Patient", content=b"{not json", headers=FHIR_JSON)
    assert response.status_code == 400


def test_too_large_is_413(client: TestClient, monkeypatch) -> None:
    monkeypatch.setattr(get_settings(), "max_body_bytes", 100)
    response = client.post("/fhir/Patient", json=patient(text={"status": "generated", "div": "x" * 200}), headers=FHIR_JSON)
    assert response.status_code == 413
    assert outcome(response)["code"] == "too-costly"


def test_bad_if_match_is_400(client: TestClient) -> None:
    response = client.put("/fhir/Patient/x", json={**patient(), "id": "x"}, headers={**FHIR_JSON, "If-Match": "yesterday"})
    assert response.status_code == 400


def test_if_match_on_missing_resource_is_412(client: TestClient) -> None:
    response = client.put("/fhir/Patient/x", json={**patient(), "id": "x"}, headers={**FHIR_JSON, "If-Match": 'W/"1"'})
    assert response.status_code == 412
    assert client.get("/fhir/Patient/x").status_code == 404


def test_unknown_route_and_method(client: TestClient) -> None:
    assert outcome(client.get("/fhir/Patient/1/nonsense/2/3"))["code"] == "not-found"
    assert client.post("/fhir/Patient/1", json={}, headers=FHIR_JSON).status_code == 405


def test_invalid_id_is_400(client: TestClient) -> None:
    response = client.put("/fhir/Patient/bad id!", json={**patient(), "id": "bad id!"}, headers=FHIR_JSON)
    assert response.status_code == 400


def test_the_kept_element_names_are_the_models() -> None:
    """resource_elements.json is what `python -m app.fhir.resources` would write from the installed models."""
    assert {t: sorted(resources.element_names(t)) for t in resources.resource_types()} == resources.model_elements()


def test_capability_statement_lists_what_is_supported(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    assert statement["fhirVersion"] == "4.0.1"
    rest = statement["rest"][0]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert list(by_type) == list(resources.model_elements())
    assert "Resource" not in by_type and "DomainResource" not in by_type  # abstract
    params = {p["name"] for p in by_type["Patient"]["searchParam"]}
    assert {"identifier", "name", "birthdate", "_id", "_lastUpdated"} <= params
    assert {"transaction", "batch", "history-system"} == {i["code"] for i in rest["interaction"]}
    assert "Task:focus" in by_type["Task"]["searchInclude"]

"""Batch and transaction Bundles."""

import base64

import orjson
from fastapi.testclient import TestClient

from tests.builders import FHIR_JSON, ID_CARD, blood_pressure, patient


def transaction(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def post_entry(resource: dict, full_url: str | None = None, **request: str) -> dict:
    entry = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"], **request}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def send(client: TestClient, bundle: dict):
    return client.post("/fhir", json=bundle, headers=FHIR_JSON)


def test_transaction_resolves_urn_uuid_references(client: TestClient) -> None:
    bundle = transaction(
        post_entry(blood_pressure("urn:uuid:7d3c0f4e-0000-4000-8000-000000000001")),
        post_entry(patient(id_card="11010519491231002X"), "urn:uuid:7d3c0f4e-0000-4000-8000-000000000001"),
    )
    response = send(client, bundle)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "transaction-response"
    observation_location, patient_location = (e["response"]["location"] for e in body["entry"])
    assert all(e["response"]["status"] == "201 Created" for e in body["entry"])
    patient_ref = patient_location.split("/_history")[0]
    observation = client.get(f"/fhir/{observation_location.split('/_history')[0]}").json()
    assert observation["subject"]["reference"] == patient_ref
    assert len(client.get(f"/fhir/Observation?subject={patient_ref}").json()["entry"]) == 1


def test_transaction_is_atomic(client: TestClient) -> None:
    bad = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "high"}}
    response = send(client, transaction(post_entry(patient()), post_entry(bad)))
    assert response.status_code == 400
    expressions = [e for issue in response.json()["issue"] for e in issue.get("expression", [])]
    assert any(e.startswith("Bundle.entry[1]") for e in expressions), expressions
    assert client.get("/fhir/Patient?_summary=count").json()["total"] == 0


def test_transaction_conditional_create_and_reference(client: TestClient) -> None:
    first = send(client, transaction(post_entry(patient(id_card="11010519491231002X"), ifNoneExist=f"identifier={ID_CARD}|11010519491231002X")))
    patient_id = first.json()["entry"][0]["response"]["location"].split("/")[1]
    again = send(
        client,
        transaction(
            post_entry(patient(id_card="11010519491231002X"), ifNoneExist=f"identifier={ID_CARD}|11010519491231002X"),
            post_entry(blood_pressure(f"Patient?identifier={ID_CARD}|11010519491231002X")),
        ),
    )
    assert again.status_code == 200, again.text
    assert again.json()["entry"][0]["response"]["status"] == "200 OK"
    assert client.get("/fhir/Patient?_summary=count").json()["total"] == 1
    observation = again.json()["entry"][1]["resource"]
    assert observation["subject"]["reference"] == f"Patient/{patient_id}"
    missing = send(client, transaction(post_entry(blood_pressure(f"Patient?identifier={ID_CARD}|nobody"))))
    assert missing.status_code == 412


def test_transaction_put_delete_get_and_patch(client: TestClient) -> None:
    created = send(client, transaction({"resource": {**patient(), "id": "p1"}, "request": {"method": "PUT", "url": "Patient/p1"}},
                                       {"resource": {**patient(), "id": "p2"}, "request": {"method": "PUT", "url": "Patient/p2"}}))
    assert [e["response"]["status"] for e in created.json()["entry"]] == ["201 Created", "201 Created"]
    patch = [{"op": "replace", "path": "/gender", "value": "female"}]
    binary = {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": base64.b64encode(orjson.dumps(patch)).decode()}
    response = send(
        client,
        transaction(
            {"request": {"method": "GET", "url": "Patient/p1"}},
            {"resource": binary, "request": {"method": "PATCH", "url": "Patient/p1"}},
            {"request": {"method": "DELETE", "url": "Patient/p2"}},
        ),
    )
    assert response.status_code == 200, response.text
    read, patched, deleted = response.json()["entry"]
    assert patched["resource"]["gender"] == "female"
    assert read["resource"]["gender"] == "female"  # GET runs after the writes
    assert deleted["response"]["status"] == "204 No Content"
    assert client.get("/fhir/Patient/p2").status_code == 410


def test_transaction_rejects_two_entries_on_one_resource(client: TestClient) -> None:
    entry = {"resource": {**patient(), "id": "p1"}, "request": {"method": "PUT", "url": "Patient/p1"}}
    assert send(client, transaction(entry, entry)).status_code == 400


def test_batch_entries_succeed_or_fail_alone(client: TestClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            post_entry(patient()),
            post_entry({"resourceType": "Patient", "birthDate": "not a date"}),
            {"request": {"method": "GET", "url": "Patient/nope"}},
            {"request": {"method": "GET", "url": "Patient?gender=male"}},
        ],
    }
    response = send(client, bundle)
    assert response.status_code == 200
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses[0] == "201 Created"
    assert statuses[1] == "400" and statuses[2] == "404"
    assert response.json()["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert response.json()["entry"][3]["resource"]["type"] == "searchset"
    assert client.get("/fhir/Patient?_summary=count").json()["total"] == 1


def test_not_a_bundle(client: TestClient) -> None:
    assert send(client, patient()).status_code == 400
    assert send(client, {"resourceType": "Bundle", "type": "collection"}).status_code == 400

"""Create, read, vread, update, patch, delete and history over HTTP."""

from fastapi.testclient import TestClient

from tests.builders import FHIR_JSON, patient


def create(client: TestClient, resource: dict, **headers: str) -> dict:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers={**FHIR_JSON, **headers})
    assert response.status_code == 201, response.text
    return response.json()


def test_create_sets_id_meta_location_and_etag(client: TestClient) -> None:
    response = client.post("/fhir/Patient", json=patient(), headers=FHIR_JSON)
    assert response.status_code == 201
    body = response.json()
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"] == f"http://testserver/fhir/Patient/{body['id']}/_history/1"
    assert response.headers["last-modified"].endswith("GMT")
    assert response.headers["content-type"].startswith("application/fhir+json")


def test_read_returns_what_was_stored(client: TestClient) -> None:
    created = create(client, patient("欧阳", "翠花"))
    response = client.get(f"/fhir/Patient/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["etag"] == 'W/"1"'


def test_update_versions_and_vread_keeps_old_versions(client: TestClient) -> None:
    created = create(client, patient())
    changed = {**created, "gender": "female"}
    response = client.put(f"/fhir/Patient/{created['id']}", json=changed, headers=FHIR_JSON)
    assert response.status_code == 200
    assert response.json()["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/Patient/{created['id']}/_history/1").json()["gender"] == "male"
    assert client.get(f"/fhir/Patient/{created['id']}/_history/2").json()["gender"] == "female"
    assert client.get(f"/fhir/Patient/{created['id']}/_history/3").status_code == 404


def test_update_as_create_uses_the_client_id(client: TestClient) -> None:
    response = client.put("/fhir/Patient/hosp-123", json={**patient(), "id": "hosp-123"}, headers=FHIR_JSON)
    assert response.status_code == 201
    assert response.json()["id"] == "hosp-123"
    assert client.get("/fhir/Patient/hosp-123").status_code == 200


def test_stale_if_match_is_412_and_changes_nothing(client: TestClient) -> None:
    created = create(client, patient())
    url = f"/fhir/Patient/{created['id']}"
    assert client.put(url, json={**created, "gender": "female"}, headers={**FHIR_JSON, "If-Match": 'W/"1"'}).status_code == 200
    stale = client.put(url, json={**created, "gender": "other"}, headers={**FHIR_JSON, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    assert client.get(url).json()["gender"] == "female"


def test_id_mismatch_is_rejected(client: TestClient) -> None:
    response = client.put("/fhir/Patient/a", json={**patient(), "id": "b"}, headers=FHIR_JSON)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Patient.id"]


def test_json_patch(client: TestClient) -> None:
    created = create(client, patient())
    ops = [{"op": "replace", "path": "/gender", "value": "female"}, {"op": "add", "path": "/active", "value": True}]
    response = client.patch(
        f"/fhir/Patient/{created['id']}", json=ops, headers={"Content-Type": "application/json-patch+json", "If-Match": 'W/"1"'}
    )
    assert response.status_code == 200, response.text
    assert response.json()["gender"] == "female"
    assert response.json()["active"] is True
    assert response.json()["meta"]["versionId"] == "2"


def test_patch_producing_an_invalid_resource_is_rejected(client: TestClient) -> None:
    created = create(client, patient())
    ops = [{"op": "add", "path": "/birthDate", "value": 12}]
    response = client.patch(f"/fhir/Patient/{created['id']}", json=ops, headers={"Content-Type": "application/json-patch+json"})
    assert response.status_code == 400
    assert client.get(f"/fhir/Patient/{created['id']}").json()["meta"]["versionId"] == "1"


def test_delete_then_read_is_gone_and_history_keeps_it(client: TestClient) -> None:
    created = create(client, patient())
    url = f"/fhir/Patient/{created['id']}"
    assert client.delete(url).status_code == 200
    gone = client.get(url)
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"
    history = client.get(f"{url}/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert client.get(f"{url}/_history/1").status_code == 200
    assert client.delete(url).status_code == 200  # deleting again is not an error
    # a delete is undone by an update, which makes a new version
    again = client.put(url, json=created, headers=FHIR_JSON)
    assert again.status_code == 201
    assert again.json()["meta"]["versionId"] == "3"


def test_type_and_system_history_page_newest_first(client: TestClient) -> None:
    # Organizations: a Patient's history also holds the master resident the index derives from it
    ids = [create(client, {"resourceType": "Organization", "name": f"社区卫生服务中心 {i}"})["id"] for i in range(5)]
    page = client.get("/fhir/Organization/_history?_count=2").json()
    assert page["type"] == "history"
    seen = [e["resource"]["id"] for e in page["entry"]]
    while next_link := next((l["url"] for l in page["link"] if l["relation"] == "next"), None):
        page = client.get(next_link).json()
        seen += [e["resource"]["id"] for e in page["entry"]]
    assert seen == list(reversed(ids))
    system = client.get("/fhir/_history").json()
    assert len(system["entry"]) == 5


def test_prefer_return(client: TestClient) -> None:
    minimal = client.post("/fhir/Patient", json=patient(), headers={**FHIR_JSON, "Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["location"]
    outcome = client.post("/fhir/Patient", json=patient(), headers={**FHIR_JSON, "Prefer": "return=OperationOutcome"})
    assert outcome.json()["resourceType"] == "OperationOutcome"


def test_conditional_create_returns_the_existing_match(client: TestClient) -> None:
    headers = {**FHIR_JSON, "If-None-Exist": "identifier=urn:oid:2.16.156.10011.1.3|11010519491231002X"}
    first = client.post("/fhir/Patient", json=patient(id_card="11010519491231002X"), headers=headers)
    second = client.post("/fhir/Patient", json=patient(id_card="11010519491231002X"), headers=headers)
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]


def test_conditional_update_and_delete(client: TestClient) -> None:
    url = "/fhir/Patient?identifier=urn:oid:2.16.156.10011.1.3|11010519491231002X"
    created = client.put(url, json=patient(id_card="11010519491231002X"), headers=FHIR_JSON)
    assert created.status_code == 201
    updated = client.put(url, json=patient(id_card="11010519491231002X", gender="female"), headers=FHIR_JSON)
    assert updated.status_code == 200
    assert updated.json()["id"] == created.json()["id"]
    assert updated.json()["meta"]["versionId"] == "2"
    create(client, patient(id_card="11010519491231002X"))
    assert client.put(url, json=patient(), headers=FHIR_JSON).status_code == 412  # two matches now
    assert client.delete(url).status_code == 412
    assert client.delete("/fhir/Patient?identifier=nobody").status_code == 200

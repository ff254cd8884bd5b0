"""Bulk Data export over HTTP, as the ONC Inferno Bulk Data v2 server suite checks it (kick-off at the three levels,
status, manifest, absolute URLs, token on files, valid R4 lines of the manifest's type, cancel then 404, each
_outputFormat spelling, _since), and that _since, _type, _typeFilter, _elements and the access policy really
filter."""

import time
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from app.config import get_settings
from app.fhir import resources
from tests.builders import FHIR_JSON, blood_pressure, patient

ASYNC = {"Accept": "application/fhir+json", "Prefer": "respond-async"}


def post(client: TestClient, resource: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers={**FHIR_JSON, **(headers or {})})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def kick_off(client: TestClient, path: str = "/fhir/$export", headers: dict[str, str] | None = None, **params: str) -> str:
    response = client.get(path, params=params, headers={**ASYNC, **(headers or {})})
    assert response.status_code == 202, response.text
    location = response.headers["Content-Location"]
    assert location.startswith("http://testserver/fhir/bulk/")
    return location


def manifest(client: TestClient, location: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = client.get(location, headers={"Accept": "application/json", **(headers or {})})
        if response.status_code != 202:
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("application/json")
            assert "Expires" in response.headers
            body: dict[str, Any] = response.json()
            assert {"transactionTime", "request", "requiresAccessToken", "output", "error"} <= set(body)
            return body
        assert response.headers["X-Progress"] and len(response.headers["X-Progress"]) < 100
        time.sleep(0.05)
    raise AssertionError("the export did not finish in 30 s")


def resources_of(client: TestClient, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every file of the manifest, fetched and checked: ndjson, one valid R4 resource of the file's type a line."""
    found: dict[str, list[dict[str, Any]]] = {}
    for item in body["output"]:
        assert item["url"].startswith("http://testserver/fhir/bulk/")
        response = client.get(item["url"], headers=headers or {})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/fhir+ndjson")
        lines = response.content.splitlines()
        assert len(lines) == item["count"]
        for line in lines:
            resource = orjson.loads(line)
            assert resource["resourceType"] == item["type"]
            resources.validate(resource)
            found.setdefault(item["type"], []).append(resource)
    return found


def sources(patients: list[dict[str, Any]]) -> set[str]:
    """The Patients sent in, leaving out the master records resident matching made of them."""
    return {p["id"] for p in patients if not any(t.get("code") == "master" for t in p.get("meta", {}).get("tag", []))}


def test_system_export_end_to_end(client: TestClient) -> None:
    first = post(client, patient("王", "芳"))
    second = post(client, patient("李", "娜", birth_date="1990-02-02"))
    observation = post(client, blood_pressure(f"Patient/{first}"))
    post(client, {"resourceType": "Organization", "name": "社区卫生服务中心"})
    location = kick_off(client)
    body = manifest(client, location)
    assert body["request"] == "http://testserver/fhir/$export"
    assert body["requiresAccessToken"] is True and body["error"] == []
    found = resources_of(client, body)
    assert sources(found["Patient"]) == {first, second}
    assert [o["id"] for o in found["Observation"]] == [observation]
    assert len(found["Organization"]) == 1
    assert "AuditEvent" not in found  # the audit trail only for a scope that names it


def test_patient_and_group_level_stay_in_the_compartment_and_the_group(client: TestClient) -> None:
    member = post(client, patient("王", "芳"))
    other = post(client, patient("李", "娜", birth_date="1990-02-02"))
    member_bp = post(client, blood_pressure(f"Patient/{member}"))
    post(client, blood_pressure(f"Patient/{other}"))
    post(client, {"resourceType": "Organization", "name": "社区卫生服务中心"})
    group = post(client, {"resourceType": "Group", "type": "person", "actual": True,
                          "member": [{"entity": {"reference": f"Patient/{member}"}}]})

    everyone = resources_of(client, manifest(client, kick_off(client, "/fhir/Patient/$export")))
    assert set(everyone) == {"Patient", "Observation"}  # the compartment: no Organization, no Group
    assert sources(everyone["Patient"]) == {member, other}

    members = resources_of(client, manifest(client, kick_off(client, f"/fhir/Group/{group}/$export")))
    assert sources(members["Patient"]) == {member}
    assert [o["id"] for o in members["Observation"]] == [member_bp]


def test_a_group_of_master_residents_brings_their_source_records(client: TestClient) -> None:
    source = post(client, patient("王", "芳", id_card="11010519491231002X"))
    master = client.get("/fhir/Patient", params={"_tag": "urn:qiao:mpi|master"}).json()["entry"][0]["resource"]["id"]
    bp = post(client, blood_pressure(f"Patient/{source}"))
    group = post(client, {"resourceType": "Group", "type": "person", "actual": True, "member": [{"entity": {"reference": f"Patient/{master}"}}]})
    found = resources_of(client, manifest(client, kick_off(client, f"/fhir/Group/{group}/$export")))
    assert {p["id"] for p in found["Patient"]} == {source, master}
    assert [o["id"] for o in found["Observation"]] == [bp]


def test_posted_kick_off_limits_to_the_patients_named(client: TestClient) -> None:
    named = post(client, patient("王", "芳"))
    post(client, patient("李", "娜", birth_date="1990-02-02"))
    parameters = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{named}"}}, {"name": "_type", "valueString": "Patient"}]}
    response = client.post("/fhir/Patient/$export", json=parameters, headers={**ASYNC, **FHIR_JSON})
    assert response.status_code == 202, response.text
    body = manifest(client, response.headers["Content-Location"])
    assert body["request"] == "http://testserver/fhir/Patient/$export"
    assert sources(resources_of(client, body)["Patient"]) == {named}
    unknown = {"resourceType": "Parameters", "parameter": [{"name": "patient", "valueReference": {"reference": "Patient/nobody"}}]}
    refused = client.post("/fhir/Patient/$export", json=unknown, headers={**ASYNC, **FHIR_JSON})
    assert refused.status_code == 400 and "Patient/nobody" in refused.text


@pytest.mark.parametrize("output_format", ["application/fhir+ndjson", "application/ndjson", "ndjson"])
def test_each_output_format_spelling_is_accepted_and_cancel_answers_404_after(client: TestClient, output_format: str) -> None:
    location = kick_off(client, _outputFormat=output_format, _since="2026-01-01T00:00:00+08:00")
    cancelled = client.delete(location)
    assert cancelled.status_code == 202
    gone = client.get(location)
    assert gone.status_code == 404
    assert gone.json()["resourceType"] == "OperationOutcome" and "cancelled" in gone.text


def test_bad_parameters_are_refused_or_ignored_when_lenient(client: TestClient) -> None:
    assert client.get("/fhir/$export", params={"_outputFormat": "text/csv"}, headers=ASYNC).status_code == 400
    assert client.get("/fhir/$export", params={"_since": "last week"}, headers=ASYNC).status_code == 400
    assert client.get("/fhir/$export", params={"_type": "Nonsense"}, headers=ASYNC).status_code == 400
    assert client.get("/fhir/$export", params={"_typeFilter": "Patient?_sort=name"}, headers=ASYNC).status_code == 400
    assert client.get("/fhir/$export", params={"patient": "Patient/x"}, headers=ASYNC).status_code == 400
    lenient = kick_off(client, headers={"Prefer": "respond-async, handling=lenient"}, _type="Patient,Nonsense", includeAssociatedData="LatestProvenanceResources")
    body = manifest(client, lenient)
    assert [e["type"] for e in body["error"]] == ["OperationOutcome"]
    outcomes = [orjson.loads(line) for line in client.get(body["error"][0]["url"]).content.splitlines()]
    assert len(outcomes) == 2 and all(o["issue"][0]["severity"] == "warning" for o in outcomes)


def test_since_type_and_type_filter_filter(client: TestClient) -> None:
    old = post(client, patient("王", "芳"))
    old_bp = post(client, blood_pressure(f"Patient/{old}", systolic=185))
    time.sleep(0.01)
    since = client.get(f"/fhir/Observation/{old_bp}").json()["meta"]["lastUpdated"]
    time.sleep(0.01)
    new = post(client, patient("李", "娜", birth_date="1990-02-02"))
    new_bp = post(client, blood_pressure(f"Patient/{new}", systolic=120))
    assert client.delete(f"/fhir/Observation/{old_bp}").status_code == 200

    body = manifest(client, kick_off(client, _since=since, _type="Patient,Observation"))
    found = resources_of(client, body)
    assert sources(found["Patient"]) == {new}
    assert [o["id"] for o in found["Observation"]] == [new_bp]
    deleted = [orjson.loads(line) for item in body["deleted"] for line in client.get(item["url"]).content.splitlines()]
    assert [e["request"] for bundle in deleted for e in bundle["entry"]] == [{"method": "DELETE", "url": f"Observation/{old_bp}"}]

    filtered = manifest(client, kick_off(client, _type="Observation,Patient", _typeFilter="Patient?name=王"))
    found = resources_of(client, filtered)
    assert sources(found["Patient"]) == {old}
    assert [o["id"] for o in found["Observation"]] == [new_bp]  # no filter on Observation; the deleted one is gone


def test_elements_keep_what_was_asked_and_what_is_mandatory(client: TestClient) -> None:
    subject = post(client, patient("王", "芳"))
    post(client, blood_pressure(f"Patient/{subject}"))
    found = resources_of(client, manifest(client, kick_off(client, _type="Observation", _elements="Observation.subject")))
    observation = found["Observation"][0]
    assert set(observation) == {"resourceType", "id", "meta", "status", "code", "subject"}
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"} in observation["meta"]["tag"]


def test_files_split_at_the_configured_size(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "bulk_file_resources", 2)
    monkeypatch.setattr(get_settings(), "bulk_batch_size", 1)
    ids = {post(client, {"resourceType": "Organization", "name": f"中心 {i}"}) for i in range(5)}
    body = manifest(client, kick_off(client, _type="Organization"))
    assert [item["count"] for item in body["output"]] == [2, 2, 1]
    assert {o["id"] for o in resources_of(client, body)["Organization"]} == ids


def test_capability_statement_declares_bulk_export(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    assert "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data" in statement["instantiates"]
    rest = statement["rest"][0]
    assert {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"} in rest["operation"]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert by_type["Group"]["operation"] == [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"}]

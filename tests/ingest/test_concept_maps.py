"""The code tables as FHIR ConceptMaps over HTTP: listed, read, searched and used by $translate (R4), the same
entries the mapping engine applies, and never written."""

from typing import Any

from fastapi.testclient import TestClient

from app.fhir import resources
from app.mapping import codes

GB_T_2261_1 = "urn:oid:2.16.156.10011.2.3.3.4"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def matches(parameters: dict[str, Any]) -> list[dict[str, Any]]:
    return [{part["name"]: next(v for k, v in part.items() if k.startswith("value")) for part in p["part"]}
            for p in parameters["parameter"] if p["name"] == "match"]


def result(parameters: dict[str, Any]) -> bool:
    return bool(next(p["valueBoolean"] for p in parameters["parameter"] if p["name"] == "result"))


def test_every_code_table_is_a_valid_concept_map_with_every_local_code(client: TestClient) -> None:
    listed = client.get("/fhir/ConceptMap").json()
    assert listed["total"] == len(codes.tables()) and listed["total"] >= 19
    for entry in listed["entry"]:
        resources.validate(entry["resource"])

    sex = client.get("/fhir/ConceptMap/sex").json()
    assert sex["url"] == "urn:qiao:conceptmap:sex" and sex["status"] == "active"
    [group] = sex["group"]
    assert group["source"] == GB_T_2261_1 and group["target"] == "http://hl7.org/fhir/administrative-gender"
    elements = {e["code"]: [t["code"] for t in e["target"]] for e in group["element"]}
    assert elements["2"] == ["female"] and elements["女"] == ["female"] and elements["9"] == ["unknown"]

    role = client.get("/fhir/ConceptMap/team-role").json()  # a CodeableConcept entry: one group per target system
    assert {g["target"] for g in role["group"]} == {"urn:qiao:family-doctor:team-role", "http://terminology.hl7.org/CodeSystem/practitioner-role"}
    assert client.get("/fhir/ConceptMap/no-such-table").status_code == 404


def test_translate_forward_reverse_and_by_map_as_the_engine_translates(client: TestClient) -> None:
    forward = client.get("/fhir/ConceptMap/$translate", params={"system": GB_T_2261_1, "code": "2"}).json()
    assert result(forward) and [m["concept"] for m in matches(forward)] == [{"system": "http://hl7.org/fhir/administrative-gender", "code": "female"}]
    assert matches(forward)[0]["equivalence"] == "equivalent" and matches(forward)[0]["source"] == "urn:qiao:conceptmap:sex"

    by_map = client.get("/fhir/ConceptMap/followup-way/$translate", params={"code": "电话"}).json()
    assert [m["concept"]["code"] for m in matches(by_map)] == [codes.tables()["followup_way"].translate("电话")["code"]] == ["VR"]

    body = {"resourceType": "Parameters", "parameter": [
        {"name": "url", "valueUri": "urn:qiao:conceptmap:followup-way"}, {"name": "system", "valueUri": ACT_CODE},
        {"name": "code", "valueCode": "AMB"}, {"name": "reverse", "valueBoolean": True}]}
    reverse = client.post("/fhir/ConceptMap/$translate", json=body).json()
    assert {m["concept"]["code"] for m in matches(reverse)} == {"1", "门诊"}

    narrowed = client.get("/fhir/ConceptMap/$translate", params={"system": "urn:qiao:family-doctor:team-role-local", "code": "1",
                                                                 "targetsystem": "http://terminology.hl7.org/CodeSystem/practitioner-role"}).json()
    assert [m["concept"]["code"] for m in matches(narrowed)] == ["doctor"]


def test_an_unmapped_code_says_so_and_bad_requests_and_writes_are_refused(client: TestClient) -> None:
    missing = client.get("/fhir/ConceptMap/$translate", params={"system": GB_T_2261_1, "code": "7"}).json()
    assert not result(missing) and matches(missing) == []
    assert "7" in next(p["valueString"] for p in missing["parameter"] if p["name"] == "message")

    no_code = client.get("/fhir/ConceptMap/$translate", params={"system": GB_T_2261_1})
    assert no_code.status_code == 400 and no_code.json()["issue"][0]["expression"] == ["code"]
    no_system = client.get("/fhir/ConceptMap/$translate", params={"code": "1"})
    assert no_system.status_code == 400 and no_system.json()["issue"][0]["expression"] == ["system"]
    assert client.get("/fhir/ConceptMap", params={"publisher": "x"}).status_code == 400

    found = client.get("/fhir/ConceptMap", params={"source-system": GB_T_2261_1}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == ["sex"]

    sex = client.get("/fhir/ConceptMap/sex").json()
    written = client.put("/fhir/ConceptMap/sex", json=sex)
    assert written.status_code == 403 and written.json()["resourceType"] == "OperationOutcome"

"""The institution policy end to end over HTTP: own data, residents in care (a referral Task), consent denial,
break-the-glass, access "all", organization-private types, writes, transactions and _include."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.auth.conftest import Headers
from tests.builders import FHIR_JSON, blood_pressure, patient


def post(client: TestClient, headers: Headers, resource: dict[str, Any]) -> str:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers={**headers, **FHIR_JSON})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def referral_task(patient_id: str, status: str = "requested") -> dict[str, Any]:
    return {"resourceType": "Task", "status": status, "intent": "order", "for": {"reference": f"Patient/{patient_id}"},
            "requester": {"reference": "Organization/chc-1"}, "owner": {"reference": "Organization/hosp-1"}}


def consent_denying(patient_id: str, *organizations: str) -> dict[str, Any]:
    provision: dict[str, Any] = {"type": "deny"}
    if organizations:
        provision["actor"] = [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                               "reference": {"reference": f"Organization/{o}"}} for o in organizations]
    return {"resourceType": "Consent", "status": "active", "patient": {"reference": f"Patient/{patient_id}"},
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}], "provision": provision}


def sees(client: TestClient, headers: Headers, reference: str) -> bool:
    """Read and search must agree (policy.visible and policy.visible_sql are one rule written twice)."""
    resource_type, resource_id = reference.split("/")
    read = client.get(f"/fhir/{reference}", headers=headers)
    found = client.get(f"/fhir/{resource_type}", params={"_id": resource_id}, headers=headers)
    assert read.status_code in (200, 403), read.text
    assert found.status_code == 200, found.text
    in_search = any(e["resource"]["id"] == resource_id for e in found.json().get("entry", []))
    assert (read.status_code == 200) == in_search, f"read {read.status_code} but search {'finds' if in_search else 'hides'} {reference}"
    return in_search


@pytest.fixture
def community(client: TestClient, institutions: dict[str, Headers]) -> dict[str, str]:
    chc = institutions["chc"]
    resident = post(client, chc, patient("李", "秀英", id_card="440524188001010014"))
    return {"patient": resident, "observation": post(client, chc, blood_pressure(f"Patient/{resident}"))}


def test_own_data_only_until_the_resident_is_referred(client: TestClient, institutions: dict[str, Headers], community: dict[str, str]) -> None:
    chc, hospital = institutions["chc"], institutions["hospital"]
    own = post(client, hospital, patient("张", "伟"))
    assert sees(client, chc, f"Patient/{community['patient']}")
    assert not sees(client, hospital, f"Patient/{community['patient']}")
    assert not sees(client, hospital, f"Observation/{community['observation']}")
    assert sees(client, hospital, f"Patient/{own}") and not sees(client, chc, f"Patient/{own}")
    refused = client.get(f"/fhir/Patient/{community['patient']}", headers=hospital)
    assert refused.json()["issue"][0]["code"] == "forbidden"

    task = post(client, chc, referral_task(community["patient"]))
    assert sees(client, hospital, f"Patient/{community['patient']}")
    assert sees(client, hospital, f"Observation/{community['observation']}")
    assert sees(client, hospital, f"Task/{task}")

    accepted = client.get(f"/fhir/Task/{task}", headers=hospital).json() | {"status": "completed"}
    assert client.put(f"/fhir/Task/{task}", json=accepted, headers={**hospital, **FHIR_JSON}).status_code == 200
    assert not sees(client, hospital, f"Patient/{community['patient']}")  # the loop is closed: no longer in its care
    assert sees(client, chc, f"Task/{task}")


def test_consent_denial_is_honoured_but_not_against_the_sender(client: TestClient, institutions: dict[str, Headers],
                                                               community: dict[str, str]) -> None:
    chc, hospital, cdc = institutions["chc"], institutions["hospital"], institutions["cdc"]
    post(client, chc, referral_task(community["patient"]))
    assert sees(client, hospital, f"Patient/{community['patient']}") and sees(client, cdc, f"Patient/{community['patient']}")
    consent = post(client, chc, consent_denying(community["patient"], "hosp-1"))
    assert not sees(client, hospital, f"Patient/{community['patient']}")
    assert sees(client, cdc, f"Patient/{community['patient']}")  # the denial names the hospital only
    withdrawn = client.get(f"/fhir/Consent/{consent}", headers=chc).json() | {"status": "inactive"}
    client.put(f"/fhir/Consent/{consent}", json=withdrawn, headers={**chc, **FHIR_JSON}).raise_for_status()
    assert sees(client, hospital, f"Patient/{community['patient']}")
    post(client, chc, consent_denying(community["patient"]))
    assert not sees(client, hospital, f"Patient/{community['patient']}") and not sees(client, cdc, f"Observation/{community['observation']}")
    assert not sees(client, institutions["emergency"], f"Patient/{community['patient']}")
    assert sees(client, chc, f"Patient/{community['patient']}")


def test_break_the_glass_widens_access(client: TestClient, institutions: dict[str, Headers], community: dict[str, str]) -> None:
    assert not sees(client, institutions["hospital"], f"Observation/{community['observation']}")
    assert sees(client, institutions["emergency"], f"Observation/{community['observation']}")
    assert sees(client, institutions["cdc"], f"Observation/{community['observation']}")


def test_writes_only_to_own_data_or_a_received_task(client: TestClient, institutions: dict[str, Headers], community: dict[str, str]) -> None:
    chc, hospital = institutions["chc"], institutions["hospital"]
    post(client, chc, referral_task(community["patient"]))
    record = client.get(f"/fhir/Patient/{community['patient']}", headers=hospital).json()
    changed = client.put(f"/fhir/Patient/{record['id']}", json=record | {"gender": "female"}, headers={**hospital, **FHIR_JSON})
    assert changed.status_code == 403
    assert client.delete(f"/fhir/Observation/{community['observation']}", headers=hospital).status_code == 403
    assert client.post("/fhir/Patient", json=patient(), headers={**institutions["cdc"], **FHIR_JSON}).status_code == 403  # .rs only
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": record | {"gender": "female"}, "request": {"method": "PUT", "url": f"Patient/{record['id']}"}},
    ]}
    refused = client.post("/fhir", json=bundle, headers={**hospital, **FHIR_JSON})
    assert refused.status_code == 403
    assert refused.json()["issue"][0]["expression"][0].startswith("Bundle.entry[1]")
    assert client.get("/fhir/Patient", params={"gender": "male", "_summary": "count"}, headers=hospital).json()["total"] == 1


def test_includes_are_filtered(client: TestClient, institutions: dict[str, Headers], community: dict[str, str]) -> None:
    hospital = institutions["hospital"]
    own = post(client, hospital, blood_pressure(f"Patient/{community['patient']}"))  # its own data about a stranger
    bundle = client.get("/fhir/Observation", params={"_include": "Observation:subject"}, headers=hospital).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == [own]  # the community's Patient is not included


def test_audit_events_need_their_own_scope_and_are_immutable(client: TestClient, institutions: dict[str, Headers],
                                                            community: dict[str, str]) -> None:
    from app.auth import audit_store

    audit_store.flush()
    assert client.get("/fhir/AuditEvent", headers=institutions["chc"]).status_code == 403  # *.cruds is not enough
    found = client.get("/fhir/AuditEvent", params={"entity": f"Patient/{community['patient']}"}, headers=institutions["auditor"])
    assert found.status_code == 200 and found.json()["entry"]
    event = found.json()["entry"][0]["resource"]
    assert client.delete(f"/fhir/AuditEvent/{event['id']}", headers=institutions["auditor"]).status_code == 403
    assert client.put(f"/fhir/AuditEvent/{event['id']}", json=event, headers={**institutions["chc"], **FHIR_JSON}).status_code == 403


def test_a_group_names_only_the_members_the_reader_may_see(client: TestClient, institutions: dict[str, Headers],
                                                           community: dict[str, str]) -> None:
    """A cohort list is about each member: read, search, history and a system export all leave out the others."""
    from tests.bulk.test_export import kick_off, manifest, resources_of

    chc, hospital = institutions["chc"], institutions["hospital"]
    stranger = post(client, chc, patient("王", "芳", id_card="440524188001010022"))
    post(client, chc, referral_task(community["patient"]))  # in the hospital's care from now on
    members = [{"entity": {"reference": f"Patient/{p}"}} for p in (community["patient"], stranger)]
    group = post(client, chc, {"resourceType": "Group", "type": "person", "actual": True, "name": "高血压随访", "member": members})

    def member_ids(content: dict[str, Any]) -> list[str]:
        return [m["entity"]["reference"].split("/")[1] for m in content.get("member", [])]

    def redacted(content: dict[str, Any]) -> bool:
        return any(s["code"] == "REDACTED" for s in content.get("meta", {}).get("security", []))

    own = client.get(f"/fhir/Group/{group}", headers=chc).json()
    assert member_ids(own) == [community["patient"], stranger] and not redacted(own)
    read = client.get(f"/fhir/Group/{group}", headers=hospital).json()
    assert member_ids(read) == [community["patient"]] and redacted(read)
    found = client.get("/fhir/Group", params={"_id": group}, headers=hospital).json()["entry"][0]["resource"]
    assert member_ids(found) == [community["patient"]] and redacted(found)
    history = client.get(f"/fhir/Group/{group}/_history", headers=hospital).json()["entry"][0]["resource"]
    assert member_ids(history) == [community["patient"]]
    exported = resources_of(client, manifest(client, kick_off(client, headers=hospital, _type="Group"), headers=hospital), headers=hospital)
    assert member_ids(exported["Group"][0]) == [community["patient"]] and redacted(exported["Group"][0])

    post(client, chc, consent_denying(community["patient"], "hosp-1"))
    assert "member" not in client.get(f"/fhir/Group/{group}", headers=hospital).json()


def test_match_names_only_the_masters_the_client_may_see(client: TestClient, institutions: dict[str, Headers],
                                                          community: dict[str, str]) -> None:
    query = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient("李", "秀英", id_card="440524188001010014")}]}

    def matched(headers: Headers) -> list[str]:
        response = client.post("/fhir/Patient/$match", json=query, headers={**headers, **FHIR_JSON})
        assert response.status_code == 200, response.text
        return [e["resource"]["id"] for e in response.json().get("entry", [])]

    assert matched(institutions["cdc"])  # access "all"
    assert matched(institutions["hospital"]) == []  # not in the hospital's care: not even named
    post(client, institutions["chc"], referral_task(community["patient"]))
    assert matched(institutions["hospital"]) == matched(institutions["cdc"])  # in its care now


def test_a_master_is_seen_by_whoever_sees_one_of_its_sources(client: TestClient, institutions: dict[str, Headers],
                                                             community: dict[str, str]) -> None:
    chc, hospital = institutions["chc"], institutions["hospital"]
    pix = client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": "urn:oid:2.16.156.10011.1.3|440524188001010014"},
                     headers=institutions["cdc"])
    master = next(p["valueIdentifier"]["value"] for p in pix.json()["parameter"]
                  if p["name"] == "targetIdentifier" and p["valueIdentifier"]["system"] == "urn:qiao:mpi")

    def sees_master(headers: Headers) -> bool:
        read = client.get(f"/fhir/Patient/{master}", headers=headers)
        found = client.get("/fhir/Patient", params={"_id": master, "_tag": "urn:qiao:mpi|master"}, headers=headers)
        assert read.status_code in (200, 403) and found.status_code == 200, (read.text, found.text)
        assert (read.status_code == 200) == bool(found.json().get("entry")), "read and search disagree"
        return read.status_code == 200

    assert sees_master(chc) and not sees_master(hospital)  # the centre sent one of its records
    post(client, chc, referral_task(community["patient"]))
    assert sees_master(hospital)  # caring for a source record is caring for the resident
    post(client, chc, consent_denying(community["patient"], "hosp-1"))
    assert not sees_master(hospital)


def test_a_master_s_carers_follow_its_records_when_a_steward_parts_them(client: TestClient, institutions: dict[str, Headers],
                                                                      community: dict[str, str]) -> None:
    hospital = institutions["hospital"]
    own = post(client, hospital, patient("李", "秀英", id_card="440524188001010014"))  # the hospital's record of her
    pix = client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": "urn:oid:2.16.156.10011.1.3|440524188001010014"})
    master = next(p["valueIdentifier"]["value"] for p in pix.json()["parameter"]
                  if p["name"] == "targetIdentifier" and p["valueIdentifier"]["system"] == "urn:qiao:mpi")
    assert client.get(f"/fhir/Patient/{master}", headers=hospital).status_code == 200  # it sent one of her records
    parted = client.post("/mpi/unmerge", json={"patient": [f"Patient/{own}"]})
    assert parted.status_code == 200, parted.text
    assert client.get(f"/fhir/Patient/{master}", headers=hospital).status_code == 403  # its record left that master
    post(client, institutions["chc"], referral_task(community["patient"]))  # then the centre refers her to it
    assert client.get(f"/fhir/Patient/{master}", headers=hospital).status_code == 200
    post(client, institutions["chc"], consent_denying(master, "hosp-1"))  # her consent, on her master resident itself
    post(client, institutions["chc"], patient("李", "秀英", id_card="440524188001010014", birth_date="1880-01-01"))  # a record joins
    assert client.get(f"/fhir/Patient/{master}", headers=hospital).status_code == 403  # rewriting the master kept its own facts

"""Family-doctor contracts (家庭医生签约) end to end over HTTP: the contract as an EpisodeOfCare, its team as a
CareTeam of PractitionerRoles, its resident linked to the same person's public-health record; signing, termination
and renewal as one contract system exports them day by day."""

from typing import Any

import orjson
from fastapi.testclient import TestClient

from tests.ingest.test_hl7v2 import fhir
from tests.ingest.test_rows import ID_CARD, jsonl, post_file
from tests.mpi.test_matching import master_of

FAMILY_DOCTOR = "hepingli-family-doctor"
CONTRACTS = "urn:qiao:contract:hepingli-family-doctor"
FAMILY_DOCTOR_PROGRAMME = "urn:qiao:care-programme|family-doctor"


def contract(**changes: Any) -> dict[str, Any]:
    """A signed contract as the family-doctor system exports it."""
    record = {
        "contract_id": "QY-2026-0001", "record_no": "110101001-00012", "id_number": ID_CARD, "name": "张三", "sex": "1",
        "birth_date": "1949-12-31", "phone": "13800138000", "team_id": "T01", "team_name": "和平里第一家庭医生团队",
        "members": [{"staff_id": "D001", "name": "王医生", "role": "1"}, {"staff_id": "N001", "name": "李护士", "role": "护士"},
                    {"staff_id": "P001", "name": "赵医生", "role": "3"}],
        "doctor_id": "D001", "packages": [{"code": "JC01", "name": "基础包"}, {"code": "GX03", "name": "高血压个性化包"}],
        "signed_on": "2026-01-05", "start": "2026-01-06", "end": "2027-01-05", "status": "2",
    }
    return {**record, **changes}


def contracts(client: TestClient, **params: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in fhir(client, "EpisodeOfCare", type=FAMILY_DOCTOR_PROGRAMME, **params).get("entry", [])]


def test_a_contract_becomes_an_episode_of_care_with_its_team_doctor_packages_and_resident(client: TestClient) -> None:
    response = post_file(client, jsonl(contract()), "contracts-2026-01-06.jsonl", source=FAMILY_DOCTOR)
    assert response.status_code == 200, response.text

    [episode] = contracts(client)
    assert episode["status"] == "active" and episode["period"] == {"start": "2026-01-06", "end": "2027-01-05"}
    assert episode["identifier"] == [{"system": CONTRACTS, "value": "QY-2026-0001"}]
    assert episode["managingOrganization"]["reference"] == "Organization/chc-1"
    assert [t.get("text") for t in episode["type"]] == [None, "基础包", "高血压个性化包"]
    assert {"url": "urn:qiao:extension:signed-on", "valueDate": "2026-01-05"} in episode["extension"]

    doctor = client.get(f"/fhir/{episode['careManager']['reference']}").json()
    assert doctor["name"] == [{"text": "王医生"}] and doctor["identifier"][0]["value"] == "D001"
    team = client.get(f"/fhir/{episode['team'][0]['reference']}").json()
    assert team["name"] == "和平里第一家庭医生团队" and len(team["participant"]) == 3
    roles = {p["role"][0]["coding"][0]["code"]: client.get(f"/fhir/{p['member']['reference']}").json() for p in team["participant"]}
    assert set(roles) == {"family-doctor", "nurse", "public-health-physician"}
    assert roles["family-doctor"]["practitioner"] == episode["careManager"]
    assert all(r["organization"]["reference"] == "Organization/chc-1" for r in roles.values())

    record = {"record_no": "110101001-00012", "name": "张三", "sex": "男", "birth_date": "1949-12-31", "id_number": ID_CARD}
    assert post_file(client, orjson.dumps(record), "health-record.json").status_code == 200
    public_health = master_of(client, "urn:oid:2.16.156.10011.1.2|110101001-00012")
    assert {master_of(client, f"urn:oid:2.16.156.10011.1.3|{ID_CARD}")} == {public_health}
    assert episode["patient"]["reference"] != f"Patient/{public_health}"  # the source record, linked to the master


def test_termination_and_renewal_follow_the_contract_system_day_by_day(client: TestClient) -> None:
    first = contract()
    assert post_file(client, jsonl(first), "contracts-day1.jsonl", source=FAMILY_DOCTOR).status_code == 200
    ended = contract(status="已解约", terminated_on="2026-06-30", termination_reason="迁出辖区")
    renewed = contract(contract_id="QY-2026-0107", start="2026-07-01", end="2027-06-30", signed_on="2026-07-01",
                       renewal_of="QY-2026-0001", members=first["members"][:2], team_id="T02", team_name="和平里第二团队")
    assert post_file(client, jsonl(ended, renewed), "contracts-day2.jsonl", source=FAMILY_DOCTOR).status_code == 200

    [old] = contracts(client, status="cancelled")
    assert old["period"]["end"] == "2026-06-30" and old["identifier"][0]["value"] == "QY-2026-0001"
    assert {"url": "urn:qiao:extension:termination-reason", "valueString": "迁出辖区"} in old["extension"]
    [new] = contracts(client, status="active")
    assert {"url": "urn:qiao:extension:renewal-of", "valueReference": {"reference": f"EpisodeOfCare/{old['id']}"}} in new["extension"]
    assert new["careManager"] == old["careManager"]  # the same doctor, now in another team
    assert len(client.get(f"/fhir/{new['team'][0]['reference']}").json()["participant"]) == 2


def test_a_member_with_an_unknown_role_fails_the_contract_naming_the_field(client: TestClient) -> None:
    members = [{"staff_id": "D001", "name": "王医生", "role": "9"}]
    response = post_file(client, jsonl(contract(members=members)), "contracts.jsonl", source=FAMILY_DOCTOR)
    assert response.status_code == 422
    kept = client.get(f"/ingest/messages/{response.json()['failed'][0]['id']}").json()
    assert kept["error"]["issue"][0]["expression"] == [".role"] and "team_role" in kept["error"]["issue"][0]["diagnostics"]
    assert contracts(client) == []

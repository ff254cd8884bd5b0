"""Registries end to end: membership follows diagnoses, enrolments, deaths, moves and the master patient index,
inside the write that changes it; the Group is read through the institution policy; entries are the server's."""

import time
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import cli
from app.cdc import registries
from app.cdc.registries import DISTRICT_URL, MANAGING_URL
from app.config import get_settings
from app.store import dates
from tests.auth.test_audit import audit_events
from tests.builders import FHIR_JSON, patient
from tests.bulk.test_export import kick_off, manifest, resources_of
from tests.cdc.builders import condition, enrolment, id_card, organization
from tests.referrals.conftest import Receiver
from tests.referrals.test_subscriptions import eventually, kinds, numbers, subscription
from tests.test_clock import clock_said

Headers = dict[str, str]
WEST_LAKE, GONGSHU = "330106", "330105"


def post(client: TestClient, resource: dict[str, Any], headers: Headers | None = None) -> dict[str, Any]:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers={**(headers or {}), **FHIR_JSON})
    assert response.status_code == 201, response.text
    return dict(response.json())


def put(client: TestClient, resource: dict[str, Any], headers: Headers | None = None) -> dict[str, Any]:
    response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource, headers={**(headers or {}), **FHIR_JSON})
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def master_of(client: TestClient, source_id: str) -> str:
    found = client.get(f"/fhir/Patient?link=Patient/{source_id}&_tag=urn:qiao:mpi|master").json()
    return str(found["entry"][0]["resource"]["id"])


def entry(client: TestClient, registry: str, master: str) -> dict[str, Any]:
    response = client.get(f"/fhir/EpisodeOfCare/{registry}-{master}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def members(client: TestClient, registry: str = "hypertension-registry", headers: Headers | None = None) -> dict[str, dict[str, Any]]:
    response = client.get(f"/fhir/Group/{registry}", headers=headers or {})
    assert response.status_code == 200, response.text
    group = response.json()
    assert group["quantity"] == len(group.get("member", []))
    return {m["entity"]["reference"].split("/")[1]: {e["url"]: e.get("valueCode") or e.get("valueReference", {}).get("reference")
                                                     for e in m["extension"]} for m in group.get("member", [])}


@pytest.fixture
def centres(client: TestClient) -> None:
    put(client, organization("chc-1", "西湖区社区卫生服务中心", WEST_LAKE))
    put(client, organization("chc-2", "拱墅区社区卫生服务中心", GONGSHU))
    put(client, organization("hosp-1", "市第一人民医院", None))


def test_a_resident_joins_when_diagnosed_and_enrolled_and_is_one_member_across_institutions(client: TestClient, centres: None) -> None:
    number = id_card(WEST_LAKE, "19560310", "021")
    at_hospital = post(client, patient("王", "建国", id_card=number, birth_date="1956-03-10"))
    post(client, condition(at_hospital["id"], "I10.x00"))
    assert members(client) == {}  # diagnosed, not yet managed

    at_centre = post(client, patient("王", "建国", id_card=number, birth_date="1956-03-10"))
    master = master_of(client, at_centre["id"])
    assert master == master_of(client, at_hospital["id"])
    post(client, enrolment(at_centre["id"], "chc-1", "2025-02-01"))

    assert members(client) == {master: {registries.ENTRY_URL: f"EpisodeOfCare/hypertension-registry-{master}",
                                        MANAGING_URL: "Organization/chc-1", DISTRICT_URL: WEST_LAKE}}
    assert members(client, "t2dm-registry") == {}
    found = entry(client, "hypertension-registry", master)
    assert found["status"] == "active" and found["statusHistory"] == [{"status": "active", "period": {"start": "2025-02-01T00:00:00+08:00"}}]
    assert found["diagnosis"][0]["condition"]["reference"].startswith("Condition/")
    searched = client.get(f"/fhir/EpisodeOfCare?type=urn:qiao:registry|hypertension-registry&district={WEST_LAKE}&status=active").json()
    assert [e["resource"]["id"] for e in searched["entry"]] == [f"hypertension-registry-{master}"]
    assert client.get(f"/fhir/EpisodeOfCare?type=urn:qiao:registry|hypertension-registry&district={GONGSHU}").json()["total"] == 0


def test_membership_follows_moves_ends_and_refuted_diagnoses(client: TestClient, centres: None) -> None:
    resident = post(client, patient("赵", "桂兰", id_card=id_card(WEST_LAKE, "19490812", "042"), birth_date="1949-08-12"))
    master = master_of(client, resident["id"])
    diagnosis = post(client, condition(resident["id"], "E11.9"))
    first = post(client, enrolment(resident["id"], "chc-1", "2024-01-10", "t2dm"))
    version = entry(client, "t2dm-registry", master)["meta"]["versionId"]

    post(client, condition(resident["id"], "E11.9"))  # a second diagnosis record: the entry gains a reference
    post(client, {**enrolment(resident["id"], "chc-2", "2025-06-01", "t2dm")})  # moved; the old centre never closed
    moved = entry(client, "t2dm-registry", master)
    assert moved["managingOrganization"]["reference"] == "Organization/chc-2"
    assert moved["extension"] == [{"url": DISTRICT_URL, "valueCode": GONGSHU}]
    assert moved["statusHistory"] == [{"status": "active", "period": {"start": "2024-01-10T00:00:00+08:00"}}]
    assert int(moved["meta"]["versionId"]) > int(version)

    put(client, {**first, "status": "finished", "period": {"start": "2024-01-10", "end": "2025-06-01"}})
    unchanged = entry(client, "t2dm-registry", master)
    assert unchanged["meta"]["versionId"] == moved["meta"]["versionId"]  # nothing the entry says changed: no new version

    put(client, {**diagnosis, "verificationStatus": {"coding": [{"code": "refuted"}]}})
    assert entry(client, "t2dm-registry", master)["status"] == "active"  # the second diagnosis still holds
    for found in client.get(f"/fhir/Condition?patient=Patient/{resident['id']}").json()["entry"]:
        put(client, {**found["resource"], "verificationStatus": {"coding": [{"code": "refuted"}]}})
    cancelled = entry(client, "t2dm-registry", master)
    assert cancelled["status"] == "cancelled" and "statusHistory" not in cancelled
    assert members(client, "t2dm-registry") == {}


def test_a_finished_enrolment_and_a_death_end_the_span(client: TestClient, centres: None) -> None:
    resident = post(client, patient("钱", "福", id_card=id_card(WEST_LAKE, "19400101", "013"), birth_date="1940-01-01"))
    master = master_of(client, resident["id"])
    post(client, condition(resident["id"]))
    post(client, enrolment(resident["id"], "chc-1", "2020-03-01", end="2022-03-01", status="finished"))
    post(client, enrolment(resident["id"], "chc-1", "2023-01-01"))
    spans = entry(client, "hypertension-registry", master)["statusHistory"]
    assert [s["period"] for s in spans] == [{"start": "2020-03-01T00:00:00+08:00", "end": "2022-03-01T00:00:00+08:00"},
                                            {"start": "2023-01-01T00:00:00+08:00"}]
    put(client, {**resident, "deceasedDateTime": "2026-02-03"})
    ended = entry(client, "hypertension-registry", master)
    assert ended["status"] == "finished" and ended["period"]["end"] == "2026-02-03T00:00:00+08:00"
    assert members(client) == {}


def test_when_the_index_links_a_record_to_another_master_the_membership_follows(client: TestClient, centres: None) -> None:
    number = id_card(GONGSHU, "19620505", "024")
    a = post(client, patient("孙", "丽", id_card=number, birth_date="1962-05-05", gender="female"))
    # no ID number yet and the month mistyped: its own master
    b = post(client, patient("孫", "麗", birth_date="1962-06-05", gender="female"))
    master_a, master_b = master_of(client, a["id"]), master_of(client, b["id"])
    assert master_a != master_b
    post(client, condition(a["id"]))
    post(client, enrolment(b["id"], "chc-2", "2025-01-01"))
    assert members(client) == {}

    put(client, {**b, "name": [{"family": "孙", "given": ["丽"]}], "birthDate": "1962-05-05",
                 "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": number}]})
    assert master_of(client, b["id"]) == master_a
    assert list(members(client)) == [master_a]


def test_entries_and_registries_are_the_servers_own(client: TestClient, centres: None) -> None:
    resident = post(client, patient("李", "强"))
    forged = {**enrolment(resident["id"], "chc-1", "2025-01-01"), "type": [{"coding": [{"system": "urn:qiao:registry", "code": "hypertension-registry"}]}]}
    assert client.post("/fhir/EpisodeOfCare", json=forged, headers=FHIR_JSON).status_code == 403
    taken = {**enrolment(resident["id"], "chc-1", "2025-01-01"), "id": f"hypertension-registry-{resident['id']}"}
    assert client.put(f"/fhir/EpisodeOfCare/{taken['id']}", json=taken, headers=FHIR_JSON).status_code == 403
    group = {"resourceType": "Group", "id": "t2dm-registry", "type": "person", "actual": True}
    response = client.put("/fhir/Group/t2dm-registry", json=group, headers=FHIR_JSON)
    assert response.status_code == 403 and response.json()["resourceType"] == "OperationOutcome"


def test_an_institution_sees_the_members_it_cares_for_and_the_cdc_sees_all(
        client: TestClient, centres: None, institutions: dict[str, Headers]) -> None:
    ours = post(client, patient("周", "敏", id_card=id_card(WEST_LAKE, "19700707", "028")), institutions["chc"])
    theirs = post(client, patient("吴", "刚", id_card=id_card(GONGSHU, "19710808", "017")))
    for resident, org in ((ours, "chc-1"), (theirs, "chc-2")):
        post(client, condition(resident["id"]))
        post(client, enrolment(resident["id"], org, "2025-01-01"))
    everyone = {master_of(client, ours["id"]), master_of(client, theirs["id"])}
    assert set(members(client, headers=institutions["cdc"])) == everyone
    assert set(members(client, headers=institutions["chc"])) == {master_of(client, ours["id"])}  # chc-1 manages it
    assert members(client, headers=institutions["hospital"]) == {}
    assert client.get("/fhir/Group/hypertension-registry", headers=institutions["auditor"]).status_code == 403
    reads = [e for e in audit_events(client, entity="Group/hypertension-registry") if e["outcome"] == "0"]
    assert {e["agent"][0]["who"]["reference"] for e in reads} == {"Organization/cdc-1", "Organization/chc-1", "Organization/hosp-1"}


def test_the_entry_is_derived_from_the_records_alone() -> None:
    """Pure: the same records give the same entry, whenever they arrive."""
    now = dates.now()
    person = registries.Person("m1", [{"resourceType": "Patient", "id": "p1"}],
                               [{**condition("p1", "I11.9"), "id": "c1"}, {**condition("p1", "E10"), "id": "c2"}],
                               [{**enrolment("p1", "chc-1", "2021-01-01", end="2021-06-01", status="finished"), "id": "e1"},
                                {**enrolment("p1", "chc-1", "2021-05-01", end="2021-09-01", status="finished"), "id": "e2"},
                                {**enrolment("p1", "chc-1", "2022-01-01", status="planned"), "id": "e3"}], {})
    hypertension = registries.entry(registries.REGISTRIES["hypertension-registry"], person, {}, now)
    assert hypertension["status"] == "finished"
    assert [s["period"] for s in hypertension["statusHistory"]] == [{"start": "2021-01-01T00:00:00+08:00", "end": "2021-09-01T00:00:00+08:00"}]
    assert hypertension["diagnosis"] == [{"condition": {"reference": "Condition/c1"}}]
    assert registries.entry(registries.REGISTRIES["t2dm-registry"], person, {}, now)["status"] == "cancelled"


def test_membership_changes_reach_the_cdc_by_subscription_filtered_by_district(
        client: TestClient, centres: None, register: Any, login: Any, receivers: dict[str, Receiver]) -> None:
    scope = "system/*.rs system/Subscription.cruds"
    register("cdc-feed", "cdc-1", scope=scope, access="all")
    cdc = login("cdc-feed", scope=scope)
    hook = receivers["hospital"]  # the CDC's endpoint
    subscribed = {**subscription(hook.url, "cdc-secret-0123456789", f"EpisodeOfCare?district={WEST_LAKE}", content="id-only"),
                  "criteria": "urn:qiao:topic:registry"}
    created = post(client, subscribed, cdc)
    hook.wait_for(lambda b: kinds(b) == ["handshake"])
    eventually(lambda: client.get(f"/fhir/Subscription/{created['id']}", headers=cdc).json()["status"] == "active")

    elsewhere = post(client, patient("吴", "刚", id_card=id_card(GONGSHU, "19710808", "017")))
    post(client, condition(elsewhere["id"]))
    post(client, enrolment(elsewhere["id"], "chc-2", "2025-01-01"))
    resident = post(client, patient("周", "敏", id_card=id_card(WEST_LAKE, "19700707", "028"), gender="female"))
    post(client, condition(resident["id"]))
    post(client, enrolment(resident["id"], "chc-1", "2025-01-01"))
    got = hook.wait_for(lambda b: numbers(b) == [1])
    focus = got[-1]["entry"][0]["resource"]["parameter"]
    assert f"EpisodeOfCare/hypertension-registry-{master_of(client, resident['id'])}" in str(focus)
    time.sleep(0.5)
    assert numbers(hook.bundles()) == [1]  # the other district's resident raised nothing here


def test_a_registry_exports_its_members_and_their_records(client: TestClient, centres: None) -> None:
    number = id_card(WEST_LAKE, "19560310", "021")
    sources = [post(client, patient("王", "建国", id_card=number, birth_date="1956-03-10")) for _ in range(2)]
    post(client, condition(sources[0]["id"]))
    post(client, enrolment(sources[1]["id"], "chc-1", "2025-02-01"))
    post(client, patient("不", "相干"))
    exported = resources_of(client, manifest(client, kick_off(client, "/fhir/Group/hypertension-registry/$export")))
    master = master_of(client, sources[0]["id"])
    assert {p["id"] for p in exported["Patient"]} == {master, sources[0]["id"], sources[1]["id"]}
    assert {e["id"] for e in exported["EpisodeOfCare"]} >= {f"hypertension-registry-{master}"}
    assert len(exported["Condition"]) == 1


def test_rebuild_derives_the_entries_of_records_loaded_before_registries(
        client: TestClient, centres: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with monkeypatch.context() as before_registries:
        before_registries.setattr(registries, "refresh", lambda *_args: 0)
        resident = post(client, patient("郑", "红", id_card=id_card(WEST_LAKE, "19580202", "029"), gender="female"))
        post(client, condition(resident["id"], "E11"))
        post(client, enrolment(resident["id"], "chc-1", "2024-05-01", "t2dm"))
        post(client, patient("冯", "军"))
    assert members(client, "t2dm-registry") == {}

    assert cli.main(["registries", "rebuild"]) == 0
    assert capsys.readouterr().out.split() == ["residents", "2", "entries-written", "1", "followups", "0"]
    assert list(members(client, "t2dm-registry")) == [master_of(client, resident["id"])]
    assert cli.main(["registries", "rebuild"]) == 0
    assert capsys.readouterr().out.split() == ["residents", "2", "entries-written", "0", "followups", "0"]  # idempotent


def test_an_enrolment_that_starts_or_ends_on_a_quiet_day_moves_its_entry_when_the_clock_passes(
        client: TestClient, centres: None, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing is written the day an enrolment's period ends: the clock's registries pass derives the entry again."""
    soon = dates.now() + timedelta(seconds=2)
    moment = soon.astimezone(get_settings().zone).isoformat(timespec="seconds")
    leaving = post(client, patient("韩", "梅", id_card=id_card(WEST_LAKE, "19660606", "020"), gender="female"))
    joining = post(client, patient("杨", "光", id_card=id_card(GONGSHU, "19670707", "031")))
    for resident in (leaving, joining):
        post(client, condition(resident["id"]))
    post(client, enrolment(leaving["id"], "chc-1", "2024-01-01", end=moment))
    post(client, enrolment(joining["id"], "chc-2", moment))
    gone, new = master_of(client, leaving["id"]), master_of(client, joining["id"])
    assert entry(client, "hypertension-registry", new)["status"] == "planned"
    assert list(members(client)) == [gone]
    assert cli.main(["clock"]) == 0
    assert clock_said(capsys)["registries"] == "changed 0"  # not yet

    time.sleep(max(0.0, (soon - dates.now()).total_seconds()) + 0.1)
    before = entry(client, "hypertension-registry", gone)["meta"]["versionId"]
    assert cli.main(["clock"]) == 0
    assert clock_said(capsys)["registries"] == "changed 2"
    ended = entry(client, "hypertension-registry", gone)
    assert ended["status"] == "finished" and int(ended["meta"]["versionId"]) == int(before) + 1
    assert entry(client, "hypertension-registry", new)["status"] == "active"
    assert list(members(client)) == [new]
    assert cli.main(["clock"]) == 0
    assert clock_said(capsys)["registries"] == "changed 0"

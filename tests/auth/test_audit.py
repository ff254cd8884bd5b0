"""The audit trail: an AuditEvent for every access to patient data (who, for which organization, why, what,
outcome), written with the write it describes, readable by an auditor, sealed in a hash chain that shows tampering."""

import base64
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import text

from app import db
from app.auth import audit_store, audit_trail
from app.auth.principal import Principal
from app.auth.scopes import Scopes
from app.fhir import resources
from tests.auth.conftest import Headers
from tests.auth.test_policy import post
from tests.builders import FHIR_JSON, blood_pressure, patient


def audit_events(client: TestClient, **params: str) -> list[dict[str, Any]]:
    audit_store.flush()
    response = client.get("/fhir/AuditEvent", params={"_count": "100", **params})
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", [])]


def interaction(event: dict[str, Any]) -> str:
    return str(event["subtype"][0]["code"])


def test_reads_searches_and_writes_are_audited(client: TestClient, institutions: dict[str, Headers]) -> None:
    chc = institutions["chc"]
    resident = post(client, chc, patient("欧阳", "翠花"))
    client.get(f"/fhir/Patient/{resident}", headers=chc).raise_for_status()
    client.get("/fhir/Patient", params={"name": "欧阳"}, headers=chc).raise_for_status()
    events = audit_events(client, entity=f"Patient/{resident}")
    assert sorted(interaction(e) for e in events) == ["create", "read", "search"]
    for event in events:
        resources.validate(event)
        agent = event["agent"][0]
        assert agent["who"]["reference"] == "Organization/chc-1" and agent["who"]["identifier"]["value"] == "chc"
        assert event["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT" and event["outcome"] == "0"
    search = next(e for e in events if interaction(e) == "search")
    query = next(e["query"] for e in search["entity"] if "query" in e)
    assert base64.b64decode(query).decode().startswith("Patient?name=")
    assert next(e for e in events if interaction(e) == "create")["action"] == "C"


def test_break_the_glass_and_refusals_are_audited(client: TestClient, institutions: dict[str, Headers]) -> None:
    resident = post(client, institutions["chc"], patient())
    assert client.get(f"/fhir/Patient/{resident}", headers=institutions["hospital"]).status_code == 403
    assert client.get(f"/fhir/Patient/{resident}", headers=institutions["emergency"]).status_code == 200
    assert client.get("/fhir/Patient", headers={"Authorization": "Bearer nonsense"}).status_code == 401
    emergency = [e for e in audit_events(client, entity=f"Patient/{resident}") if e["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"]
    assert len(emergency) == 1 and emergency[0]["meta"]["security"][0]["code"] == "BTG"
    refusals = audit_events(client, outcome="4")
    assert {e["agent"][0]["who"]["identifier"]["value"] for e in refusals} == {"hospital", "unauthenticated"}
    assert all("outcomeDesc" in e for e in refusals)


def test_a_rolled_back_write_leaves_no_write_audit(client: TestClient, institutions: dict[str, Headers]) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation"}, "request": {"method": "POST", "url": "Observation"}},  # invalid
    ]}
    assert client.post("/fhir", json=bundle, headers={**institutions["chc"], **FHIR_JSON}).status_code == 400
    assert [e for e in audit_events(client, subtype="create")] == []


def test_the_hash_chain_shows_tampering(client: TestClient, institutions: dict[str, Headers], app_engine: Any) -> None:
    chc = institutions["chc"]
    resident = post(client, chc, patient())
    for _ in range(3):
        post(client, chc, blood_pressure(f"Patient/{resident}"))
    audit_store.flush()
    audit_store.seal()  # the server's own writer thread may have sealed some already
    with db.read_session() as session:
        intact = audit_store.verify(session)
    assert intact.intact and intact.sealed >= 4 and intact.pending == 0

    with app_engine.begin() as connection:
        victim = connection.execute(text("SELECT resource_pk FROM audit_chain WHERE position = 2")).scalar_one()
        connection.execute(text("UPDATE resource_version SET content = :c WHERE resource_pk = :pk"),
                           {"c": '{"resourceType": "AuditEvent", "outcome": "0"}', "pk": victim})
    with db.read_session() as session:
        broken = audit_store.verify(session)
    assert broken.breaks == ["position 2: the AuditEvent's content was altered"]

    with app_engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_chain WHERE position = 3"))
    with db.read_session() as session:
        assert any("missing" in problem for problem in audit_store.verify(session).breaks)


def test_accesses_that_differ_only_in_what_and_when_share_one_event() -> None:
    hospital = Principal("hospital", "hosp-1", Scopes((("*", "rs"),)), address="10.0.0.7")
    other = Principal("hospital", "hosp-1", Scopes((("*", "rs"),)), address="10.0.0.8")
    accesses = [audit_trail.Access(hospital, "read", (f"Patient/p{i}/_history/1",), (f"p{i}",)) for i in range(3)]
    accesses += [audit_trail.Access(other, "read", ("Patient/p0/_history/1",), ("p0",)),
                 audit_trail.Access(hospital, "read", ("Patient/p1/_history/1",), ("p1",)),  # read again: named once
                 audit_trail.Access(hospital, "read", outcome=audit_trail.MINOR_FAILURE, description="refused")]
    combined, elsewhere, refusal = audit_trail.events(accesses)
    resources.validate(combined)
    assert combined["period"]["start"] <= combined["period"]["end"] == combined["recorded"]
    named = [e["what"]["reference"] for e in combined["entity"]]
    assert sorted(named) == sorted([f"Patient/p{i}" for i in range(3)] + [f"Patient/p{i}/_history/1" for i in range(3)])
    assert elsewhere["agent"][0]["network"]["address"] == "10.0.0.8" and "period" not in elsewhere
    assert refusal["outcome"] == "4" and "entity" not in refusal


def test_no_event_stands_for_more_than_the_combine_limit() -> None:
    hospital = Principal("hospital", "hosp-1", Scopes((("*", "rs"),)))
    count = audit_trail.COMBINE_LIMIT * 2 + 1
    events = audit_trail.events(audit_trail.Access(hospital, "search", query=f"Patient?_id=p{i}") for i in range(count))
    assert [len(e["entity"]) for e in events] == [audit_trail.COMBINE_LIMIT, audit_trail.COMBINE_LIMIT, 1]


def test_a_flush_writes_what_was_queued_and_chains_it(app_engine: Any, monkeypatch: Any) -> None:
    """Accesses queued while a flush writes wait for the next one: a flush that chased the queue under load wrote an
    AuditEvent every few milliseconds for a handful of accesses."""
    hospital = Principal("hospital", "hosp-1", Scopes((("*", "rs"),)))
    audit_store.flush()
    for i in range(10):
        audit_trail.record(hospital, "read", patients=[f"p{i}"])
    append, arrived = audit_store.store.append_audit, []

    def append_while_a_read_arrives(*args: Any, **kwargs: Any) -> list[int]:
        if not arrived:
            audit_trail.record(hospital, "read", patients=["late"])
            arrived.append(True)
        return append(*args, **kwargs)

    monkeypatch.setattr(audit_store.store, "append_audit", append_while_a_read_arrives)
    assert audit_store.flush() == 10
    assert len(audit_trail.queue) == 1
    monkeypatch.undo()
    assert audit_store.flush() == 1
    with db.read_session() as session:
        chained = audit_store.verify(session)
    assert chained.intact and chained.pending == 0 and chained.sealed >= 2

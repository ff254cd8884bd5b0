"""The referral Task's state machine per actor, and the closed loop an upward referral opens, through HTTP."""

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from app.referrals.tables import referral_transition
from tests.builders import patient

Headers = dict[str, str]
FHIR_JSON = {"Content-Type": "application/fhir+json"}
STAGES = "urn:qiao:referral-status"


def post(client: TestClient, headers: Headers, resource: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers={**headers, **FHIR_JSON})
    assert response.status_code == 201, response.text
    return dict(response.json())


def refer_up(client: TestClient, chc: Headers, resident: str, status: str = "requested") -> dict[str, Any]:
    request = post(client, chc, {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": {"reference": f"Patient/{resident}"},
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005"},
                                 {"system": "urn:qiao:referral-direction", "code": "upward"}]}],
        "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10"}], "text": "连续两次血压控制不满意"}],
        "requester": {"reference": "Organization/chc-1"}, "performer": [{"reference": "Organization/hosp-1"}],
    })
    return post(client, chc, {
        "resourceType": "Task", "status": status, "intent": "order", "focus": {"reference": f"ServiceRequest/{request['id']}"},
        "for": {"reference": f"Patient/{resident}"}, "authoredOn": "2026-11-20T09:00:00+08:00",
        "requester": {"reference": "Organization/chc-1"}, "owner": {"reference": "Organization/hosp-1"},
    })


def move(client: TestClient, headers: Headers, task: dict[str, Any], status: str, stage: str | None = None, **changes: Any) -> Any:
    body = {k: v for k, v in task.items() if k not in ("meta", "businessStatus")} | {"status": status} | changes
    if stage:
        body["businessStatus"] = {"coding": [{"system": STAGES, "code": stage}]}
    return client.put(f"/fhir/Task/{task['id']}", json=body, headers={**headers, **FHIR_JSON})


def tasks(client: TestClient, headers: Headers, query: str) -> list[dict[str, Any]]:
    bundle = client.get(f"/fhir/Task?{query}", headers=headers).json()
    return [entry["resource"] for entry in bundle.get("entry", [])]


def test_upward_referral_closes_the_loop(client: TestClient, institutions: dict[str, Headers], app_engine: Engine) -> None:
    chc, hospital = institutions["chc"], institutions["hospital"]
    resident = post(client, chc, patient("李", "秀英", id_card="440524188001010014"))["id"]
    task = refer_up(client, chc, resident)
    assert task["businessStatus"]["coding"][0]["code"] == "requested"

    due = tasks(client, chc, "owner=Organization/chc-1&code=urn:qiao:task-code|referral-follow-up")
    assert len(due) == 1 and due[0]["description"] == "2周内主动随访转诊情况"
    assert due[0]["partOf"] == [{"reference": f"Task/{task['id']}"}] and due[0]["restriction"]["period"]["end"] > task["authoredOn"]

    refused = move(client, chc, task, "accepted")
    assert refused.status_code == 409
    assert "allowed: cancelled, entered-in-error" in refused.json()["issue"][0]["diagnostics"]
    task = move(client, hospital, task, "accepted").json()
    assert task["businessStatus"]["coding"][0]["display"] == "已同意"
    task = move(client, hospital, task, "in-progress", "scheduled").json()
    without_outcome = move(client, hospital, task, "completed")
    assert without_outcome.status_code == 422 and without_outcome.json()["issue"][0]["expression"] == ["Task.output"]
    outcome = post(client, hospital, {"resourceType": "DocumentReference", "status": "current",
                                      "subject": {"reference": f"Patient/{resident}"}, "description": "出院小结：调整降压方案",
                                      "content": [{"attachment": {"contentType": "text/plain", "data": "6LCD5pW06ZmN5Y6L5pa55qGI"}}]})
    done = move(client, hospital, task, "completed", output=[{"type": {"text": "出院小结"},
                                                           "valueReference": {"reference": f"DocumentReference/{outcome['id']}"}}])
    assert done.status_code == 200, done.text

    back = tasks(client, chc, "owner=Organization/chc-1&requester=Organization/hosp-1&status=requested")
    down = next(t for t in back if "focus" in t)
    follow = next(t for t in back if "focus" not in t)
    assert down["partOf"] == [{"reference": f"Task/{task['id']}"}]
    assert down["input"][0]["valueReference"] == {"reference": f"DocumentReference/{outcome['id']}"}
    request = client.get(f"/fhir/{down['focus']['reference']}", headers=chc).json()
    assert {"system": "urn:qiao:referral-direction", "code": "downward", "display": "下转"} in request["category"][0]["coding"]
    assert follow["partOf"] == [{"reference": f"Task/{down['id']}"}] and follow["owner"] == {"reference": "Organization/chc-1"}

    with app_engine.connect() as connection:
        trail = connection.execute(select(referral_transition.c.from_stage, referral_transition.c.to_stage, referral_transition.c.actor_role,
                                          referral_transition.c.actor_org)
                                   .where(referral_transition.c.task_id == task["id"]).order_by(referral_transition.c.pk)).all()
    assert [tuple(row) for row in trail] == [
        (None, "requested", "requester", "chc-1"), ("requested", "accepted", "owner", "hosp-1"),
        ("accepted", "scheduled", "owner", "hosp-1"), ("scheduled", "completed", "owner", "hosp-1"),
    ]


def test_cancelling_an_accepted_referral_is_a_handshake(client: TestClient, institutions: dict[str, Headers]) -> None:
    chc, hospital = institutions["chc"], institutions["hospital"]
    resident = post(client, chc, patient("王", "芳"))["id"]
    task = move(client, hospital, refer_up(client, chc, resident), "accepted").json()
    assert move(client, chc, task, "cancelled").status_code == 409
    asked = move(client, chc, task, "in-progress", "cancel-requested")
    assert asked.status_code == 200, asked.text
    assert move(client, chc, asked.json(), "cancelled").status_code == 409  # the receiver confirms, not the sender
    confirmed = move(client, hospital, asked.json(), "cancelled")
    assert confirmed.status_code == 200 and confirmed.json()["businessStatus"]["coding"][0]["code"] == "cancelled"


def test_the_referral_cannot_be_forged_or_rewritten(client: TestClient, institutions: dict[str, Headers]) -> None:
    chc, hospital = institutions["chc"], institutions["hospital"]
    resident = post(client, chc, patient("赵", "磊"))["id"]
    task = refer_up(client, chc, resident)
    rerouted = move(client, hospital, task, "requested", owner={"reference": "Organization/hosp-2"})
    assert rerouted.status_code == 409 and rerouted.json()["issue"][0]["expression"] == ["Task.owner"]
    rejected = move(client, hospital, task, "rejected")
    assert rejected.status_code == 422 and rejected.json()["issue"][0]["expression"] == ["Task.statusReason"]
    assert move(client, hospital, task, "rejected", statusReason={"text": "本院无相应专科"}).status_code == 200
    forged = {k: v for k, v in task.items() if k not in ("id", "meta", "businessStatus")}
    response = client.post("/fhir/Task", json=forged, headers={**hospital, **FHIR_JSON})
    assert response.status_code == 403  # the hospital is not the requester it names
    wrong = client.post("/fhir/Task", json=forged | {"status": "accepted"}, headers={**chc, **FHIR_JSON})
    assert wrong.status_code == 409
    mismatch = forged | {"businessStatus": {"coding": [{"system": STAGES, "code": "accepted"}]}}
    assert client.post("/fhir/Task", json=mismatch, headers={**chc, **FHIR_JSON}).status_code == 422

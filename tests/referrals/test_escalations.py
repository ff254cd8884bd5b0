"""Escalations end to end: a referral not received or accepted in time, and a follow-up not done by its due date,
raise an escalation that both parties receive on the escalation topic and can query; moving on resolves it."""

import time
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import cli
from app.config import get_settings
from app.store import dates
from tests.builders import patient
from tests.referrals.conftest import Receiver
from tests.referrals.test_subscriptions import kinds, numbers, status_of, subscription
from tests.referrals.test_workflow import FHIR_JSON, Headers, move, post, refer_up, tasks
from tests.test_clock import clock_said

ESCALATION_TOPIC = "urn:qiao:topic:escalation"
OPEN_ESCALATIONS = "code=urn:qiao:task-code|escalation&status=requested"


def escalations_raised(capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(["clock"]) == 0
    return clock_said(capsys)["escalations"]


def wait_until(moment: Any) -> None:
    time.sleep(max(0.0, (moment - dates.now()).total_seconds()) + 0.05)


def reason(task: dict[str, Any]) -> str:
    return str(task["reasonCode"]["coding"][0]["code"])


def test_a_referral_not_received_or_accepted_in_time_is_escalated_to_both_parties_until_it_moves_on(
        client: TestClient, institutions: dict[str, Headers], receivers: dict[str, Receiver], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    chc, hospital = institutions["chc"], institutions["hospital"]
    monkeypatch.setattr(get_settings(), "escalate_not_received_hours", 1 / 3600)
    monkeypatch.setattr(get_settings(), "escalate_not_accepted_hours", 1 / 3600)
    post(client, hospital, subscription(receivers["hospital"].url, "hospital-secret-0123456789", "Task?owner=Organization/hosp-1",
                                        topic=ESCALATION_TOPIC))
    post(client, chc, subscription(receivers["chc"].url, "chc-secret-0123456789", "Task?requester=Organization/chc-1",
                                   topic=ESCALATION_TOPIC))
    for receiver in (receivers["hospital"], receivers["chc"]):
        receiver.wait_for(lambda b: kinds(b) == ["handshake"])

    resident = post(client, chc, patient("周", "建国"))["id"]
    task = refer_up(client, chc, resident)
    assert escalations_raised(capsys) == "changed 0"  # not yet late
    wait_until(dates.now() + timedelta(seconds=1))
    assert escalations_raised(capsys) == "changed 2"
    assert escalations_raised(capsys) == "changed 0"  # raised once

    late = tasks(client, hospital, f"{OPEN_ESCALATIONS}&owner=Organization/hosp-1&focus=Task/{task['id']}")
    assert sorted(map(reason, late)) == ["not-accepted", "not-received"]
    assert all(e["requester"] == {"reference": "Organization/chc-1"} and e["for"] == task["for"] for e in late)
    assert tasks(client, chc, f"{OPEN_ESCALATIONS}&requester=Organization/chc-1") != []
    for receiver in (receivers["hospital"], receivers["chc"]):
        got = receiver.wait_for(lambda b: numbers(b) == [1, 2])
        assert {e["resource"]["id"] for b in got[1:] for e in b["entry"][1:]} == {e["id"] for e in late}
        assert status_of(got[-1])["topic"]["valueCanonical"] == ESCALATION_TOPIC

    erased = client.put(f"/fhir/Task/{late[0]['id']}", json={**late[0], "status": "completed"}, headers={**hospital, **FHIR_JSON})
    assert erased.status_code == 403  # the late party cannot erase the escalation

    task = move(client, hospital, task, "received").json()
    still = tasks(client, hospital, f"{OPEN_ESCALATIONS}&focus=Task/{task['id']}")
    assert list(map(reason, still)) == ["not-accepted"]
    move(client, hospital, task, "accepted")
    assert tasks(client, hospital, f"{OPEN_ESCALATIONS}&focus=Task/{task['id']}") == []
    resolved = tasks(client, hospital, f"code=urn:qiao:task-code|escalation&status=completed&focus=Task/{task['id']}")
    assert {e["statusReason"]["text"] for e in resolved} == {"已处理：已接收审核中", "已处理：已同意"}
    got = receivers["hospital"].wait_for(lambda b: numbers(b) == [1, 2, 3, 4])
    assert [e["resource"]["status"] for b in got[1:] for e in b["entry"][1:]][2:] == ["completed", "completed"]


def test_a_follow_up_not_done_by_its_due_date_is_escalated_to_the_community(
        client: TestClient, institutions: dict[str, Headers], capsys: pytest.CaptureFixture[str]) -> None:
    chc, hospital = institutions["chc"], institutions["hospital"]
    resident = post(client, chc, patient("吴", "桂英", gender="female"))["id"]
    task = refer_up(client, chc, resident)
    move(client, hospital, task, "accepted")
    follow_up = tasks(client, chc, "code=urn:qiao:task-code|referral-follow-up&owner=Organization/chc-1")[0]
    soon = dates.now() + timedelta(seconds=1)
    edited = client.put(f"/fhir/Task/{follow_up['id']}", headers={**chc, **FHIR_JSON},
                        json={**follow_up, "restriction": {"period": {"end": dates.instant(soon)}}})
    assert edited.status_code == 200, edited.text
    assert escalations_raised(capsys) == "changed 0"
    wait_until(soon)
    assert escalations_raised(capsys) == "changed 1"

    overdue = tasks(client, chc, f"{OPEN_ESCALATIONS}&owner=Organization/chc-1")
    assert [reason(e) for e in overdue] == ["follow-up-overdue"]
    assert overdue[0]["focus"] == {"reference": f"Task/{follow_up['id']}"}
    assert overdue[0]["restriction"]["period"]["end"] == dates.instant(soon)
    done = client.put(f"/fhir/Task/{follow_up['id']}", headers={**chc, **FHIR_JSON},
                      json={**edited.json(), "status": "completed"})
    assert done.status_code == 200, done.text
    assert tasks(client, chc, f"{OPEN_ESCALATIONS}&owner=Organization/chc-1") == []

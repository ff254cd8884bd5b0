"""The referral loop's metrics as Measures: time to accept and to complete (median hours, per receiving hospital)
and the share of escalations resolved (per late party), from referrals moved through HTTP and the clock."""

import csv
import io
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app import db
from app.config import get_settings
from app.referrals.tables import referral_transition
from app.store import dates
from tests.builders import patient
from tests.referrals.test_escalations import escalations_raised, wait_until
from tests.referrals.test_workflow import Headers, move, post, refer_up

HOURS = {"unit": "h", "system": "http://unitsofmeasure.org", "code": "h"}


def backdate(task_id: str, stage: str, hours_ago: float) -> None:
    """Move a recorded move back in time, as if the hospital had taken that long."""
    t = referral_transition.c
    with db.transaction() as session:
        session.execute(update(referral_transition).where(t.task_id == task_id, t.to_stage == stage)
                        .values(at=dates.now() - timedelta(hours=hours_ago)))


def evaluate(client: TestClient, headers: Headers, measure: str, extra: str = "") -> dict[str, Any]:
    today = dates.now().astimezone(get_settings().zone).date()
    period = f"periodStart={today - timedelta(days=3)}&periodEnd={today}"
    response = client.get(f"/fhir/Measure/{measure}/$evaluate-measure?{period}{extra}", headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def populations(report: dict[str, Any]) -> dict[str, int]:
    return {p["code"]["coding"][0]["code"]: p["count"] for p in report["group"][0]["population"]}


def test_time_to_accept_and_complete_and_escalations_resolved(client: TestClient, institutions: dict[str, Headers],
                                                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    chc, hospital, cdc = institutions["chc"], institutions["hospital"], institutions["cdc"]
    monkeypatch.setattr(get_settings(), "escalate_not_received_hours", 1 / 3600)
    monkeypatch.setattr(get_settings(), "escalate_not_accepted_hours", 0)
    referrals = [refer_up(client, chc, post(client, chc, patient("钱", f"{given}"))["id"]) for given in ("一", "二", "三")]
    wait_until(dates.now() + timedelta(seconds=1))
    assert escalations_raised(capsys) == "changed 3"  # none received within the (one-second) service level

    first, second, waiting = referrals
    first = move(client, hospital, first, "accepted").json()  # resolves first's escalation
    second = move(client, hospital, second, "accepted").json()
    outcome = post(client, hospital, {"resourceType": "DocumentReference", "status": "current", "subject": first["for"],
                                      "content": [{"attachment": {"contentType": "text/plain", "data": "5Ye66Zmi"}}]})
    done = move(client, hospital, first, "completed", output=[{"type": {"text": "出院小结"},
                                                              "valueReference": {"reference": f"DocumentReference/{outcome['id']}"}}])
    assert done.status_code == 200, done.text
    for task, sent, accepted in ((first, 30, 26), (second, 20, 10)):
        backdate(task["id"], "requested", sent)
        backdate(task["id"], "accepted", accepted)
    backdate(first["id"], "completed", 2)

    accept = evaluate(client, cdc, "referral-time-to-accept")
    assert populations(accept) == {"initial-population": 3, "measure-population": 3, "measure-population-exclusion": 1}
    assert accept["group"][0]["measureScore"] == {"value": 7.0, **HOURS}  # the median of 4 h and 10 h
    [hospital_stratum] = [s for s in accept["group"][0]["stratifier"][0]["stratum"] if s["value"]["text"] == "Organization/hosp-1"]
    assert hospital_stratum["measureScore"]["value"] == 7.0
    complete = evaluate(client, cdc, "referral-time-to-complete", "&reportType=subject-list")
    assert complete["group"][0]["measureScore"] == {"value": 28.0, **HOURS}
    excluded = next(c for c in complete["contained"] if c["id"] == "measure-population-exclusion")
    assert sorted(e["item"]["reference"] for e in excluded["entry"]) == sorted(f"Task/{t['id']}" for t in (second, waiting))
    assert evaluate(client, hospital, "referral-time-to-accept", "&subject=Organization/hosp-1")["group"][0]["measureScore"]["value"] == 7.0

    resolved = evaluate(client, cdc, "referral-escalation-resolution-rate")
    assert populations(resolved)["denominator"] == 3 and populations(resolved)["numerator"] == 2  # waiting's is still open
    assert resolved["group"][0]["measureScore"] == {"value": 0.6667}

    text = client.get(f"/cdc/indicators?year={dates.now().astimezone(get_settings().zone).year}", headers=cdc).text
    table = {(row["indicator"], row["organization"]): row for row in csv.DictReader(io.StringIO(text.removeprefix("\ufeff")))}
    accepted = table[("referral-time-to-accept", "hosp-1")]
    assert (accepted["numerator"], accepted["denominator"], accepted["rate_percent"], accepted["median_hours"]) == ("2", "3", "", "7")

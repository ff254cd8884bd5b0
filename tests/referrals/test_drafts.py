"""Draft referrals from the national rules, end to end: a community centre records public-health follow-ups over
HTTP; a danger sign or the second uncontrolled follow-up in a row drafts an upward referral that only the family
doctor sends, and a correction withdraws it."""

from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from app.config import get_settings
from app.referrals.drafts import WITHDRAWN
from app.referrals.tables import referral_transition
from app.store import dates
from tests.builders import FHIR_JSON, patient
from tests.cdc.builders import followup
from tests.referrals.test_workflow import move, post, tasks

Headers = dict[str, str]
TRIGGER = "urn:qiao:referral-trigger"


def day(days_ago: int) -> str:
    return f"{dates.now().astimezone(get_settings().zone) - timedelta(days=days_ago):%Y-%m-%d}"


def record(client: TestClient, headers: Headers, resident: str, days_ago: int, **readings: Any) -> dict[str, Any]:
    """A follow-up as the community's transaction; the response Bundle."""
    response = client.post("/fhir", json=followup(resident, day(days_ago), **readings), headers={**headers, **FHIR_JSON})
    assert response.status_code == 200, response.text
    return dict(response.json())


def drafts(client: TestClient, headers: Headers, resident: str) -> list[dict[str, Any]]:
    return [t for t in tasks(client, headers, f"patient=Patient/{resident}") if "focus" in t]


def test_a_danger_sign_drafts_a_referral_the_family_doctor_sends(client: TestClient, institutions: dict[str, Headers],
                                                                  app_engine: Engine) -> None:
    chc, hospital = institutions["chc"], institutions["hospital"]
    resident = post(client, chc, patient("孙", "丽"))["id"]
    record(client, chc, resident, 20, bp=(190, 112))  # three weeks old: history being loaded, not a referral now
    assert drafts(client, chc, resident) == []

    record(client, chc, resident, 1, bp=(186, 96))
    [draft] = drafts(client, chc, resident)
    assert draft["status"] == "draft" and draft["priority"] == "stat" and "owner" not in draft
    assert draft["requester"] == {"reference": "Organization/chc-1"}
    assert draft["reasonCode"]["coding"][0]["code"] == "danger-sign" and "收缩压 186 mmHg ≥ 180" in draft["description"]
    request = client.get(f"/fhir/{draft['focus']['reference']}", headers=chc).json()
    assert request["status"] == "draft" and request["reasonCode"][0]["coding"][0]["code"] == "I10"
    assert tasks(client, hospital, f"patient=Patient/{resident}") == []  # nobody else learns of a draft

    record(client, chc, resident, 0, bp=(192, 100))  # a referral is open (the draft): no second one
    assert len(drafts(client, chc, resident)) == 1

    unaddressed = move(client, chc, draft, "requested")
    assert unaddressed.status_code == 422 and unaddressed.json()["issue"][0]["expression"] == ["Task.owner"]
    sent = move(client, chc, draft, "requested", owner={"reference": "Organization/hosp-1"})
    assert sent.status_code == 200, sent.text
    request = client.get(f"/fhir/{draft['focus']['reference']}", headers=hospital).json()
    assert request["status"] == "active" and request["performer"] == [{"reference": "Organization/hosp-1"}]
    follow = [t for t in tasks(client, chc, f"patient=Patient/{resident}") if "focus" not in t]
    assert [t["description"] for t in follow] == ["2周内主动随访转诊情况"]
    with app_engine.connect() as connection:
        trail = connection.execute(select(referral_transition.c.from_stage, referral_transition.c.to_stage, referral_transition.c.actor_role)
                                   .where(referral_transition.c.task_id == draft["id"]).order_by(referral_transition.c.pk)).all()
    assert [tuple(row) for row in trail] == [(None, "draft", "server"), ("draft", "requested", "requester")]


def test_the_second_uncontrolled_follow_up_drafts_and_a_correction_withdraws(client: TestClient, institutions: dict[str, Headers]) -> None:
    chc = institutions["chc"]
    resident = post(client, chc, patient("周", "强", birth_date="1975-03-01"))["id"]
    record(client, chc, resident, 10, bp=(152, 94))
    assert drafts(client, chc, resident) == []  # the first uncontrolled follow-up: adjust drugs, see again in two weeks
    second = record(client, chc, resident, 2, bp=(146, 92))
    [draft] = drafts(client, chc, resident)
    assert draft["priority"] == "routine" and draft["reasonCode"]["coding"][0]["code"] == "uncontrolled-twice"
    assert f"{day(10)}、{day(2)}" in draft["description"]

    reading_url = second["entry"][1]["response"]["location"].split("/_history")[0]
    reading = client.get(f"/fhir/{reading_url}", headers=chc).json()
    reading["component"][0]["valueQuantity"]["value"] = 132
    reading["component"][1]["valueQuantity"]["value"] = 84
    corrected = client.put(f"/fhir/{reading_url}", json=reading, headers={**chc, **FHIR_JSON})
    assert corrected.status_code == 200, corrected.text
    [withdrawn] = drafts(client, chc, resident)
    assert withdrawn["status"] == "cancelled" and withdrawn["statusReason"]["text"] == WITHDRAWN
    assert client.get(f"/fhir/{withdrawn['focus']['reference']}", headers=chc).json()["status"] == "revoked"


def test_the_rules_per_programme_and_age(client: TestClient, institutions: dict[str, Headers]) -> None:
    chc = institutions["chc"]
    elderly = post(client, chc, patient("吴", "秀英", birth_date="1950-06-01"))["id"]
    for days_ago in (9, 3):
        record(client, chc, elderly, days_ago, bp=(146, 86))  # controlled from 65 (below 150/90), as the control rate says
    assert drafts(client, chc, elderly) == []

    diabetic = post(client, chc, patient("郑", "伟"))["id"]
    record(client, chc, diabetic, 1, programme="t2dm", glucose=(3.2, "mmol/L"))
    [draft] = drafts(client, chc, diabetic)
    assert draft["reasonCode"]["coding"][0]["code"] == "danger-sign" and "血糖 3.2 mmol/L ≤ 3.9" in draft["description"]
    assert client.get(f"/fhir/{draft['focus']['reference']}", headers=chc).json()["reasonCode"][0]["coding"][0]["code"] == "E11"

    cancelled = move(client, chc, draft, "cancelled", statusReason={"text": "已电话联系，患者自行前往医院"})
    assert cancelled.status_code == 200, cancelled.text
    assert client.get(f"/fhir/{draft['focus']['reference']}", headers=chc).json()["status"] == "revoked"
    record(client, chc, diabetic, 0, programme="t2dm", glucose=(310, "mg/dL"))  # 17.2 mmol/L: drafted again
    assert sorted(t["status"] for t in drafts(client, chc, diabetic)) == ["cancelled", "draft"]

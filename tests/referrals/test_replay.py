"""Replay by filter: a subscriber or an operator has delivered events sent again, chosen by event number, resource
or time, over HTTP ($replay) and by `qiao subscriptions replay`; the replayed events keep their numbers."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import db
from app.cli import main
from app.subscriptions import service
from tests.builders import patient
from tests.referrals.conftest import Receiver
from tests.referrals.test_subscriptions import eventually, fast_retries, numbers, status_of, subscription  # noqa: F401 (fixture)
from tests.referrals.test_workflow import Headers, move, post, refer_up

SECRET = "hospital-secret-0123456789"


def focus_of(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle["entry"][1:]]


@pytest.fixture
def delivered(client: TestClient, institutions: dict[str, Headers], receivers: dict[str, Receiver]) -> dict[str, Any]:
    """The hospital's subscription after four events: two referrals, each sent (1, 3) and accepted (2, 4)."""
    chc, hospital = institutions["chc"], institutions["hospital"]
    created = post(client, hospital, subscription(receivers["hospital"].url, SECRET, "Task?owner=Organization/hosp-1"))
    first = refer_up(client, chc, post(client, chc, patient("李", "秀英"))["id"])
    move(client, hospital, first, "accepted")
    second = refer_up(client, chc, post(client, chc, patient("王", "建国"))["id"])
    move(client, hospital, second, "accepted")
    receivers["hospital"].wait_for(lambda b: sorted(numbers(b)) == [1, 2, 3, 4])
    eventually(lambda: acknowledged(created["id"]))  # recorded a moment after the receipt
    receivers["hospital"].received.clear()
    return {"id": created["id"], "first": first["id"], "second": second["id"]}


def acknowledged(subscription_id: str) -> bool:
    """Whether the server has recorded every event as delivered, the subscription being active."""
    with db.read_session() as session:
        row = next(r for r in service.overview(session) if r["subscription_id"] == subscription_id)
    return bool(row["pending"] == 0 and row["status"] == "active")


def replay(client: TestClient, headers: Headers, subscription_id: str, query: str = "", body: dict[str, Any] | None = None) -> Any:
    return client.post(f"/fhir/Subscription/{subscription_id}/$replay{query}", json=body,
                       headers={**headers, "Content-Type": "application/fhir+json"} if body else headers)


def test_a_subscriber_replays_one_referral_and_gets_its_events_with_their_numbers(
        client: TestClient, institutions: dict[str, Headers], receivers: dict[str, Receiver], delivered: dict[str, Any]) -> None:
    hospital = institutions["hospital"]
    answer = replay(client, hospital, delivered["id"], f"?focus=Task/{delivered['second']}")
    assert answer.status_code == 200, answer.text
    assert {p["name"]: p.get("valueInteger") for p in answer.json()["parameter"]} == {"subscription": None, "queued": 2, "pending": 0}
    got = receivers["hospital"].wait_for(lambda b: numbers(b) == [3, 4])
    assert focus_of(got[0]) == [delivered["second"], delivered["second"]]
    assert status_of(got[0])["type"]["valueCode"] == "event-notification"
    assert status_of(got[0])["events-since-subscription-start"]["valueString"] == "4"

    body = {"resourceType": "Parameters", "parameter": [{"name": "resourceType", "valueCode": "Task"},
                                                        {"name": "eventsUntilNumber", "valueInteger": 1}]}
    assert replay(client, hospital, delivered["id"], body=body).json()["parameter"][1]["valueInteger"] == 1
    assert numbers(receivers["hospital"].wait_for(lambda b: len(b) == 2)) == [3, 4, 1]

    later = replay(client, hospital, delivered["id"], "?eventsSinceTime=2999-01-01&resourceType=ServiceRequest")
    assert later.json()["parameter"][1]["valueInteger"] == 0  # nothing raised then, nor for that type


def test_a_replay_waits_out_an_outage_and_nothing_is_lost(
        client: TestClient, institutions: dict[str, Headers], receivers: dict[str, Receiver], delivered: dict[str, Any],
        fast_retries: None) -> None:  # noqa: F811 (fixture)
    hospital = institutions["hospital"]
    receivers["hospital"].failing = True
    assert replay(client, hospital, delivered["id"], "?eventsSinceNumber=2&eventsUntilNumber=3").status_code == 200
    eventually(lambda: receivers["hospital"].refused >= 2)
    receivers["hospital"].failing = False
    assert numbers(receivers["hospital"].wait_for(lambda b: len(b) == 1)) == [2, 3]


def test_the_operator_replays_by_command(receivers: dict[str, Receiver], delivered: dict[str, Any],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["subscriptions", "replay", delivered["id"], "--type", "Task", "--since", "4", "--since-time", "2020"]) == 0
    assert "1 events to send again" in capsys.readouterr().out
    assert numbers(receivers["hospital"].wait_for(lambda b: len(b) == 1)) == [4]
    assert main(["subscriptions", "replay", delivered["id"], "--since-time", "yesterday"]) == 2
    assert "eventsSinceTime 'yesterday' is not a FHIR date or time" in capsys.readouterr().err


def test_a_replay_is_refused_clearly(client: TestClient, institutions: dict[str, Headers], delivered: dict[str, Any],
                                     register: Any, login: Any) -> None:
    hospital = institutions["hospital"]
    for query, where in [("?since=3", "since"), ("?eventsSinceNumber=0", "eventsSinceNumber"), ("?focus=Task", "focus"),
                         ("?resourceType=Tsk", "resourceType"), ("?eventsUntilTime=tomorrow", "eventsUntilTime")]:
        answer = replay(client, hospital, delivered["id"], query)
        assert answer.status_code == 400 and answer.json()["issue"][0]["expression"] == [where], (query, answer.text)
    assert replay(client, institutions["chc"], delivered["id"]).status_code == 403  # another organization's subscription
    register("reader", "hosp-1", scope="system/Subscription.rs")
    assert replay(client, login("reader", scope="system/Subscription.rs"), delivered["id"]).status_code == 403  # may read, not change
    assert replay(client, hospital, "no-such-subscription").status_code == 404

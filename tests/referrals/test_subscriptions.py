"""Subscriptions end to end: handshake, signed notifications in event-number order, only what the subscriber may
read, retries through an outage with `error` and recovery, $status and $events; webhook receivers are real HTTP."""

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import get_settings
from app.subscriptions.registry import FILTER, HEARTBEAT, PAYLOAD_CONTENT, SECRET
from tests.builders import patient
from tests.referrals.conftest import Receiver
from tests.referrals.test_workflow import FHIR_JSON, Headers, move, post, refer_up

TOPIC = "urn:qiao:topic:referral"


def subscription(endpoint: str, secret: str, *filters: str, content: str = "full-resource", topic: str = TOPIC) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Subscription", "status": "requested", "reason": "referrals", "criteria": topic,
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                    "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": content}]},
                    "header": ["Authorization: Bearer receiver-token"],
                    "extension": [{"url": SECRET, "valueString": secret}]},
    }
    if filters:
        resource["_criteria"] = {"extension": [{"url": FILTER, "valueString": f} for f in filters]}
    return resource


def status_of(bundle: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: p for p in bundle["entry"][0]["resource"]["parameter"]}


def numbers(bundles: list[dict[str, Any]]) -> list[int]:
    return [int(next(part["valueString"] for part in p["part"] if part["name"] == "event-number"))
            for b in bundles for p in b["entry"][0]["resource"]["parameter"] if p["name"] == "notification-event"]


def kinds(bundles: list[dict[str, Any]]) -> list[str]:
    return [status_of(b)["type"]["valueCode"] for b in bundles]


def eventually(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "subscription_max_backoff", 1)
    monkeypatch.setattr(get_settings(), "subscription_error_after", 2)


def test_referral_changes_reach_the_subscribers_signed_in_order_through_an_outage(
        client: TestClient, institutions: dict[str, Headers], receivers: dict[str, Receiver], register: Any, login: Any,
        fast_retries: None) -> None:
    chc, hospital = institutions["chc"], institutions["hospital"]
    register("other", "other-1")
    other = login("other")
    secret = "hospital-secret-0123456789"
    created = post(client, hospital, subscription(receivers["hospital"].url, secret, "Task?owner=Organization/hosp-1"))
    assert created["status"] == "requested" and "extension" not in created["channel"]  # the secret is never served
    post(client, other, subscription(receivers["other"].url, "other-secret-0123456789"))  # no filter, but no care relation
    receivers["hospital"].wait_for(lambda b: kinds(b) == ["handshake"])
    eventually(lambda: client.get(f"/fhir/Subscription/{created['id']}", headers=hospital).json()["status"] == "active")

    resident = post(client, chc, patient("李", "秀英"))["id"]
    task = refer_up(client, chc, resident)
    got = receivers["hospital"].wait_for(lambda b: numbers(b) == [1])
    headers, body = receivers["hospital"].received[-1]
    assert headers["x-qiao-signature"] == "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["authorization"] == "Bearer receiver-token" and headers["content-type"].startswith("application/fhir+json")
    notification = got[-1]
    assert notification["type"] == "history" and status_of(notification)["events-since-subscription-start"]["valueString"] == "1"
    assert notification["entry"][1]["resource"]["id"] == task["id"]  # full-resource

    receivers["hospital"].failing = True
    task = move(client, hospital, task, "accepted").json()
    task = move(client, hospital, task, "in-progress", "scheduled").json()
    eventually(lambda: client.get(f"/fhir/Subscription/{created['id']}", headers=hospital).json()["status"] == "error")
    status = client.get(f"/fhir/Subscription/{created['id']}/$status", headers=hospital).json()
    assert status_of(status)["status"]["valueCode"] == "error"
    assert status_of(status)["events-since-subscription-start"]["valueString"] == "3"
    missed = client.get(f"/fhir/Subscription/{created['id']}/$events?eventsSinceNumber=2", headers=hospital).json()
    assert numbers([missed]) == [2, 3]

    receivers["hospital"].failing = False
    got = receivers["hospital"].wait_for(lambda b: numbers(b)[-1:] == [3])
    assert numbers(got) == [1, 2, 3] and receivers["hospital"].refused >= 2
    eventually(lambda: client.get(f"/fhir/Subscription/{created['id']}", headers=hospital).json()["status"] == "active")
    assert kinds(receivers["other"].bundles()) == ["handshake"]  # never told of a resident it does not care for

    replayed = client.post(f"/fhir/Subscription/{created['id']}/$replay?eventsSinceNumber=2", headers=hospital)
    assert replayed.status_code == 200 and replayed.json()["parameter"][1] == {"name": "queued", "valueInteger": 2}
    assert numbers(receivers["hospital"].wait_for(lambda b: len(numbers(b)) == 5)) == [1, 2, 3, 2, 3]


def test_a_subscription_the_server_cannot_honour_is_refused(client: TestClient, institutions: dict[str, Headers]) -> None:
    hospital = institutions["hospital"]
    cases = {
        "Subscription.criteria": subscription("https://hook.example/x", "s" * 20) | {"criteria": "Task?status=requested"},
        "Subscription.channel.endpoint": subscription("http://hook.example/x", "s" * 20),
        "Subscription.channel.extension": subscription("https://hook.example/x", "short"),
        "Subscription.criteria.extension": subscription("https://hook.example/x", "s" * 20, "Task?authored-on=2026"),
        "Subscription.status": subscription("https://hook.example/x", "s" * 20) | {"status": "active"},
    }
    for where, resource in cases.items():
        response = client.post("/fhir/Subscription", json=resource, headers={**hospital, **FHIR_JSON})
        assert response.status_code == 422, (where, response.text)
        assert response.json()["issue"][0]["expression"] == [where]


def test_the_capability_statement_declares_the_topics(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    subscription = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription")
    assert TOPIC in [e["valueCanonical"] for e in subscription["extension"]]
    assert [o["name"] for o in subscription["operation"]] == ["status", "events", "replay"]
    assert "http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/CapabilitySubscriptionServer" in statement["instantiates"]


def test_a_quiet_subscription_gets_signed_heartbeats_at_its_period(
        client: TestClient, institutions: dict[str, Headers], receivers: dict[str, Receiver]) -> None:
    secret = "hospital-secret-0123456789"
    resource = subscription(receivers["hospital"].url, secret, "Task?owner=Organization/hosp-1", content="empty")
    resource["channel"]["extension"].append({"url": HEARTBEAT, "valueUnsignedInt": 1})
    post(client, institutions["hospital"], resource)
    started = time.monotonic()
    got = receivers["hospital"].wait_for(lambda b: kinds(b) == ["handshake", "heartbeat", "heartbeat"], timeout=10)
    assert time.monotonic() - started >= 1.5  # one period apart, not sent back to back
    beat = got[-1]
    assert status_of(beat)["events-since-subscription-start"]["valueString"] == "0" and len(beat["entry"]) == 1
    headers, body = receivers["hospital"].received[-1]
    assert headers["x-qiao-signature"] == "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_a_slow_subscriber_does_not_hold_up_the_others(
        client: TestClient, institutions: dict[str, Headers], receivers: dict[str, Receiver]) -> None:
    chc, hospital = institutions["chc"], institutions["hospital"]
    post(client, hospital, subscription(receivers["hospital"].url, "hospital-secret-0123456789", "Task?owner=Organization/hosp-1"))
    post(client, chc, subscription(receivers["chc"].url, "chc-secret-0123456789", "Task?requester=Organization/chc-1"))
    for name in ("hospital", "chc"):
        receivers[name].wait_for(lambda b: kinds(b) == ["handshake"])
    receivers["hospital"].delay = 4
    task = refer_up(client, chc, post(client, chc, patient("李", "秀英"))["id"])
    receivers["hospital"].wait_for(lambda b: numbers(b) == [1])  # arrived; its answer takes 4 s
    seen = len(numbers(receivers["chc"].wait_for(lambda b: len(numbers(b)) >= 1)))  # the referral (and its follow-up task)
    moved = time.monotonic()
    move(client, chc, task, "cancelled")  # the referrer withdraws the request before it is accepted
    receivers["chc"].wait_for(lambda b: len(numbers(b)) > seen, timeout=3)
    assert time.monotonic() - moved < 2  # not behind the hospital's delivery
    receivers["hospital"].wait_for(lambda b: numbers(b) == [1, 2], timeout=15)

"""The issue's end-to-end scenario against `qiao serve --workers 2` on PostgreSQL, over real HTTP: a community
centre, a hospital and the CDC as three clients with webhook receivers on loopback; the hospital's receiver down
for a while, the server process delivering to it killed (SIGKILL) in the middle of a delivery, Qiao restarted.
Every notification arrives at least once, in event-number order per subscription, none lost."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.auth.keys import ClientKey
from tests.benchmarks.common import ROOT, Server, drop_database, qiao_server, scratch_database
from tests.builders import patient
from tests.referrals.conftest import Receiver
from tests.referrals.test_subscriptions import eventually, kinds, numbers, status_of, subscription
from tests.test_cli import free_port

FHIR_JSON = {"Content-Type": "application/fhir+json"}
PARTIES = {"chc": ("chc-1", "organization", "Task?requester=Organization/chc-1"),
           "hospital": ("hosp-1", "organization", "Task?owner=Organization/hosp-1"),
           "cdc": ("cdc-1", "all", None)}
SETTINGS = {"QIAO_SUBSCRIPTION_LEASE_SECONDS": "12", "QIAO_SUBSCRIPTION_MAX_BACKOFF": "1", "QIAO_SUBSCRIPTION_ERROR_AFTER": "2"}


@pytest.fixture
def database() -> Iterator[str]:
    name = f"qiao_e2e_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    try:
        url = scratch_database(name)
    except Exception as error:  # noqa: BLE001 - as the other PostgreSQL tests: skipped only when not required
        if os.environ.get("QIAO_TEST_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"PostgreSQL not reachable: {type(error).__name__}")
    yield url
    drop_database(name)


def qiao(database_url: str, *args: str) -> str:
    env = {**os.environ, "QIAO_DATABASE_URL": database_url, "QIAO_LOG_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def process_sending_from(server: Server, port: int) -> int:
    """The server process holding the socket with this local port: its inode from /proc/net/tcp, then the process
    whose open files include it (no tool beyond /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for pid in server.pids():
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except FileNotFoundError:  # closed meanwhile
                continue
    raise AssertionError(f"no server process holds local port {port}")


def event_numbers(receiver: Receiver) -> list[int]:
    return numbers([b for b in receiver.bundles() if kinds([b]) == ["event-notification"]])


def test_every_notification_arrives_in_order_through_an_outage_a_killed_worker_and_a_restart(database: str, tmp_path: Path) -> None:
    key = ClientKey("ES384")
    (tmp_path / "jwks.json").write_bytes(orjson.dumps(key.jwks))
    port = free_port()
    with qiao_server(database, workers=2, port=port, env=SETTINGS) as server:
        headers = {}
        for name, (org, access, _) in PARTIES.items():
            qiao(database, "client", "add", name, "--organization", f"Organization/{org}", "--scope", "system/*.cruds",
                 "--jwks", str(tmp_path / "jwks.json"), "--access", access)
            token = qiao(database, "token", "--scope", "system/*.cruds", "--client", name).split()[-1]
            headers[name] = {"Authorization": f"Bearer {token}", **FHIR_JSON}
        fhir = httpx.Client(base_url=server.url, timeout=30)

        def post(party: str, resource: dict[str, Any]) -> dict[str, Any]:
            response = fhir.post(f"/{resource['resourceType']}", json=resource, headers=headers[party])
            assert response.status_code == 201, response.text
            return dict(response.json())

        def move(party: str, task: dict[str, Any], status: str, **changes: Any) -> dict[str, Any]:
            body = {k: v for k, v in task.items() if k not in ("meta", "businessStatus")} | {"status": status} | changes
            response = fhir.put(f"/Task/{task['id']}", json=body, headers=headers[party])
            assert response.status_code == 200, response.text
            return dict(response.json())

        receivers = {name: Receiver() for name in PARTIES}
        ids = {}
        for name, (_, _, criteria) in PARTIES.items():
            ids[name] = post(name, subscription(receivers[name].url, f"{name}-secret-0123456789", *([criteria] if criteria else [])))["id"]
        for receiver in receivers.values():
            receiver.wait_for(lambda b: kinds(b) == ["handshake"], timeout=30)

        # the hospital's endpoint is down while the community sends three referrals
        receivers["hospital"].failing = True
        referrals = []
        for given in ("一", "二", "三"):
            resident = post("chc", patient("冯", given))["id"]
            request = post("chc", {
                "resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": {"reference": f"Patient/{resident}"},
                "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005"},
                                         {"system": "urn:qiao:referral-direction", "code": "upward"}]}],
                "requester": {"reference": "Organization/chc-1"}, "performer": [{"reference": "Organization/hosp-1"}]})
            referrals.append(post("chc", {
                "resourceType": "Task", "status": "requested", "intent": "order", "focus": {"reference": f"ServiceRequest/{request['id']}"},
                "for": {"reference": f"Patient/{resident}"}, "requester": {"reference": "Organization/chc-1"},
                "owner": {"reference": "Organization/hosp-1"}}))
        eventually(lambda: receivers["hospital"].refused >= 2, timeout=30)

        # it comes back, slow: the process delivering the backlog is killed while the hospital holds the request
        hospital = receivers["hospital"]
        handshakes = len(hospital.senders)
        hospital.delay, hospital.failing = 3.0, False
        eventually(lambda: len(hospital.senders) > handshakes, timeout=30)
        killed = process_sending_from(server, hospital.senders[handshakes])
        assert killed != server.process.pid
        os.kill(killed, signal.SIGKILL)
        hospital.delay = 0.0
        fhir = httpx.Client(base_url=server.url, timeout=30)  # new connections: the old ones may have gone with the process

        # the hospital goes on working (with whichever process still serves), then Qiao is restarted
        for task in referrals[:2]:
            move("hospital", task, "accepted")
    with qiao_server(database, workers=2, port=port, env=SETTINGS) as server:
        fhir = httpx.Client(base_url=server.url, timeout=30)
        move("hospital", fhir.get(f"/Task/{referrals[2]['id']}", headers=headers["hospital"]).json(), "rejected",
             statusReason={"text": "本院无相应专科"})

        for name, receiver in receivers.items():
            status = fhir.get(f"/Subscription/{ids[name]}/$status", headers=headers[name]).json()
            total = int(status_of(status)["events-since-subscription-start"]["valueString"])
            assert total > 0, name
            eventually(lambda r=receiver, t=total: set(event_numbers(r)) == set(range(1, t + 1)), timeout=60)
            first_arrivals = list(dict.fromkeys(event_numbers(receiver)))
            assert first_arrivals == sorted(first_arrivals), f"{name}: events arrived out of order: {event_numbers(receiver)}"
        for receiver in receivers.values():
            receiver.server.shutdown()
    hospital_events = event_numbers(hospital)
    assert len(hospital_events) > len(set(hospital_events))  # what the killed process was sending came again

"""Subscription delivery: from a referral Task change to the subscriber's receipt, with 100 subscriptions.

    .venv/bin/python -m tests.benchmarks.subscriptions [--rate 10] [--seconds 30] [--workers 2]

Two phases against `qiao serve` on PostgreSQL, the subscribers being one rest-hook receiver on loopback (asyncio,
in this process) behind 100 endpoints:
- fan-out: 100 subscriptions of 100 observer clients (access all, no filter, full-resource), so that each change
  is 100 events; referral Tasks are changed at `--rate` changes/s, paced (not as fast as possible).
- routed: 100 subscriptions of 100 hospitals, each filtered to `Task?owner=` itself; each change is one event;
  changes are written back to back by 4 clients, after a baseline of the same writes with no subscription at all.
Latency is from the change's meta.lastUpdated (stamped in its transaction) to the receiver's clock (same machine),
per event; events are deduplicated by (subscription, event number) as a receiver would.
"""

import argparse
import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import orjson

from app import db
from app.auth import clients, smart
from tests.benchmarks.common import ADMIN_URL, migrated_database, operator_token, qiao_server
from tests.builders import patient

DATABASE = "qiao_bench_subscriptions"
SECRET_URL = "urn:qiao:subscription-secret"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
FHIR_JSON = "application/fhir+json"


class Receiver:
    """A minimal HTTP/1.1 server answering 200 to every POST; keeps (arrival time, path, body) to parse afterwards."""

    def __init__(self) -> None:
        self.received: list[tuple[float, str, bytes]] = []
        self.port = 0
        ready = threading.Event()
        threading.Thread(target=lambda: asyncio.run(self._serve(ready)), daemon=True).start()
        ready.wait()

    async def _serve(self, ready: threading.Event) -> None:
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0, backlog=512)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        await server.serve_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while request_line := await reader.readline():
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.received.append((time.time(), request_line.split()[1].decode(), body))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"


def tokens(url: str, names: list[str], access: str) -> dict[str, dict[str, str]]:
    """A registered client and a bearer token per organization name."""
    engine = db.make_engine(url)
    db.set_engine(engine)
    made = {}
    with db.transaction() as session:
        for name in names:
            clients.add(session, name, organization=name, scope="system/Subscription.cruds system/Task.rs",
                        jwks={"keys": [{"kty": "EC", "kid": "unused", "crv": "P-384", "x": "x", "y": "y"}]}, access=access)
            token = smart.mint(session, name, name, "system/Subscription.cruds system/Task.rs", access=access, purpose="TREAT", lifetime=7200)
            made[name] = {"Authorization": f"Bearer {token}"}
    engine.dispose()
    return made


def subscription(endpoint: str, *filters: str) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Subscription", "status": "requested", "reason": "benchmark", "criteria": "urn:qiao:topic:referral",
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": FHIR_JSON,
                    "_payload": {"extension": [{"url": BACKPORT + "backport-payload-content", "valueCode": "full-resource"}]},
                    "extension": [{"url": SECRET_URL, "valueString": "benchmark-secret-0123456789"}]},
    }
    if filters:
        resource["_criteria"] = {"extension": [{"url": BACKPORT + "backport-filter-criteria", "valueString": f} for f in filters]}
    return resource


def referrals(client: httpx.Client, operator: dict[str, str], hospitals: list[str]) -> list[dict[str, Any]]:
    """One upward referral Task per hospital, from chc-1, for residents of its own."""
    made = []
    for i, hospital in enumerate(hospitals):
        resident = client.post("/Patient", json=patient("张", f"伟{i}", id_card=None), headers=operator).json()["id"]
        request = client.post("/ServiceRequest", headers=operator, json={
            "resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": {"reference": f"Patient/{resident}"},
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005"},
                                     {"system": "urn:qiao:referral-direction", "code": "upward"}]}],
            "requester": {"reference": "Organization/chc-1"}, "performer": [{"reference": f"Organization/{hospital}"}]}).json()
        task = client.post("/Task", headers=operator, json={
            "resourceType": "Task", "status": "requested", "intent": "order", "focus": {"reference": f"ServiceRequest/{request['id']}"},
            "for": {"reference": f"Patient/{resident}"}, "requester": {"reference": "Organization/chc-1"},
            "owner": {"reference": f"Organization/{hospital}"}})
        assert task.status_code == 201, task.text
        made.append(task.json())
    return made


def change(client: httpx.Client, operator: dict[str, str], task: dict[str, Any], n: int) -> None:
    """An edit within the referral's stage (an interim note; no If-Match, so the last write wins): a Task change the
    referral topic raises."""
    body = {k: v for k, v in task.items() if k != "meta"} | {"note": [{"text": f"随访备注 {n}"}]}
    response = client.put(f"/Task/{task['id']}", json=body, headers=operator)
    assert response.status_code == 200, response.text


def subscribe(client: httpx.Client, receiver: Receiver, parties: dict[str, dict[str, str]], filtered: bool) -> dict[str, str]:
    """A subscription per party, once every handshake has arrived; {party: Subscription id}."""
    made = {}
    for name, headers in parties.items():
        filters = [f"Task?owner=Organization/{name}"] if filtered else []
        response = client.post("/Subscription", json=subscription(receiver.url(name), *filters), headers=headers)
        assert response.status_code == 201, response.text
        made[name] = response.json()["id"]
    deadline = time.monotonic() + 120
    while len({path for _, path, _ in receiver.received}) < len(parties):  # every handshake
        assert time.monotonic() < deadline, "handshakes did not all arrive"
        time.sleep(0.1)
    return made


def notified(body: bytes) -> list[tuple[int, dict[str, Any]]] | None:
    """(event number, its entry) for each event of an event notification; None for a handshake or heartbeat."""
    bundle = orjson.loads(body)
    parameters = bundle["entry"][0]["resource"]["parameter"]
    if next(p["valueCode"] for p in parameters if p["name"] == "type") != "event-notification":
        return None
    numbers = [int(next(part["valueString"] for part in p["part"] if part["name"] == "event-number"))
               for p in parameters if p["name"] == "notification-event"]
    return list(zip(numbers, bundle["entry"][1:], strict=True))  # one entry per event, in order


def events(received: list[tuple[float, str, bytes]]) -> tuple[list[float], int, float, float]:
    """(latency per event in seconds, notifications posted, first and last arrival) for event notifications."""
    seen: set[tuple[str, int]] = set()
    latencies, posts, first, last = [], 0, float("inf"), 0.0
    for arrived, path, body in received:
        found = notified(body)
        if found is None:
            continue
        posts += 1
        first, last = min(first, arrived), max(last, arrived)
        for number, entry in found:
            if (path, number) in seen:
                continue
            seen.add((path, number))
            stamped = datetime.fromisoformat(entry["resource"]["meta"]["lastUpdated"].replace("Z", "+00:00")).timestamp()
            latencies.append(arrived - stamped)
    return latencies, posts, first, last


def wait_for(receiver: Receiver, expected: int, timeout: float = 300) -> None:
    """Until `expected` distinct events arrived. Looks only at what arrived since the last look, so that waiting
    takes little of the CPU the server is measured on."""
    deadline = time.monotonic() + timeout
    seen: set[tuple[str, int]] = set()
    looked = 0
    while True:
        arrived = receiver.received[looked:]
        looked += len(arrived)
        for _, path, body in arrived:
            seen.update((path, number) for number, _ in notified(body) or [])
        if len(seen) >= expected:
            return
        assert time.monotonic() < deadline, f"only {len(seen)} of {expected} events arrived"
        time.sleep(0.5)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def report(label: str, receiver: Receiver, changes: int, written: float) -> None:
    latencies, posts, first, last = events(receiver.received)
    span = max(last - first, 1e-9)
    print(f"  {label}: {changes} changes in {written:.1f} s → {len(latencies)} events in {posts} notifications over {span:.1f} s")
    print(f"    {len(latencies) / span:8.0f} events/s  {posts / span:6.0f} notifications/s   latency p50 {percentile(latencies, 50):6.0f} ms"
          f"   p99 {percentile(latencies, 99):6.0f} ms   max {percentile(latencies, 100):6.0f} ms")


def closed_loop(server_url: str, operator: dict[str, str], tasks: list[dict[str, Any]], seconds: float, start: int) -> tuple[int, float]:
    """Changes written back to back by 4 clients for `seconds`; (how many, how long)."""
    counter = iter(range(start, 10**9))
    until = time.monotonic() + seconds

    def run(k: int) -> int:
        done = 0
        with httpx.Client(base_url=server_url, timeout=60, headers={"Content-Type": FHIR_JSON}) as client:
            while time.monotonic() < until:
                n = next(counter)
                change(client, operator, tasks[n % len(tasks)], n)
                done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        total = sum(pool.map(run, range(4)))
    return total, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=10, help="fan-out phase: Task changes per second (each is 100 events)")
    parser.add_argument("--seconds", type=float, default=30, help="length of each phase's writing")
    parser.add_argument("--subscriptions", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    url = migrated_database(DATABASE)
    observers = tokens(url, [f"observer-{i}" for i in range(args.subscriptions)], access="all")
    hospitals = tokens(url, [f"hosp-{i}" for i in range(args.subscriptions)], access="organization")
    operator = operator_token(url)
    print(f"subscriptions: {args.subscriptions} subscriptions, {args.workers} workers, PostgreSQL ({ADMIN_URL.rsplit('/', 1)[0]})")
    with qiao_server(url, workers=args.workers) as server, \
            httpx.Client(base_url=server.url, timeout=60, headers={"Content-Type": FHIR_JSON}) as client:
        tasks = referrals(client, operator, list(hospitals))

        fan_out = Receiver()
        subscribed = subscribe(client, fan_out, observers, filtered=False)
        changes = int(args.rate * args.seconds)
        started = time.perf_counter()
        for n in range(changes):
            due = started + n / args.rate
            time.sleep(max(0.0, due - time.perf_counter()))
            change(client, operator, tasks[n % len(tasks)], n)
        written = time.perf_counter() - started
        wait_for(fan_out, changes * args.subscriptions)
        report(f"fan-out at {args.rate:g} changes/s", fan_out, changes, written)
        for name, subscription_id in subscribed.items():  # gone, so that the next phases measure their own
            assert client.delete(f"/Subscription/{subscription_id}", headers=observers[name]).status_code in (200, 204)

        baseline, baseline_seconds = closed_loop(server.url, operator, tasks, args.seconds, 10**6)
        print(f"  baseline, no live subscription: {baseline / baseline_seconds:6.0f} changes/s (4 clients back to back)")
        routed = Receiver()
        subscribe(client, routed, hospitals, filtered=True)
        changes, written = closed_loop(server.url, operator, tasks, args.seconds, 2 * 10**6)
        wait_for(routed, changes)
        print(f"  routed: {changes / written:6.0f} changes/s with 100 filtered subscriptions = "
              f"{changes / written / (baseline / baseline_seconds):.2f} x the baseline")
        report("routed, back to back", routed, changes, written)


if __name__ == "__main__":
    main()

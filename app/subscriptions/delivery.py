"""Rest-hook delivery from the outbox, by every server process, safe with several against one database.

A process claims a subscription by a lease (a conditional UPDATE, committed before any HTTP call), sends its pending
events in number order in one notification, and records how far the subscriber acknowledged. Events chosen for a
replay (app/subscriptions/service.py) go in a notification of their own, with their own numbers. A process that dies
mid-delivery leaves a lease that runs out; another process then sends the same events again (at least once; the
receiver deduplicates by event number). A failure is retried with exponential backoff, without end; after
`subscription_error_after` failures in a row the Subscription goes to `error` (and back to `active` once a delivery
succeeds). Every body is signed: header X-Qiao-Signature = "sha256=" + hex HMAC-SHA256(secret, body).
"""

import hashlib
import hmac
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
from sqlalchemy import bindparam, delete, or_, select, update
from sqlalchemy.orm import Session

from app import db
from app.config import get_settings
from app.logging import fields
from app.store import dates
from app.store import repository as store
from app.subscriptions import notifications
from app.subscriptions.tables import subscription_resend, subscription_state

log = logging.getLogger("qiao.subscriptions")
#: How long finished deliveries may wait to be recorded with others (and their threads to be given new work).
GATHER_SECONDS = 0.05
SIGNATURE_HEADER = "X-Qiao-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff(failures: int) -> float:
    """1 s, 2 s, 4 s, … up to `subscription_max_backoff` seconds."""
    return float(min(2 ** max(failures - 1, 0), get_settings().subscription_max_backoff))


def post_timeout(asked: float) -> float:
    """The subscription's timeout, held under half the lease: a delivery is at most two POSTs (handshake, events)."""
    return max(0.5, min(asked, (get_settings().subscription_lease_seconds - 5) / 2))


def _resend_of(subscription_id: Any) -> Any:
    """Whether the subscription has events chosen to be sent again."""
    return select(subscription_resend.c.event_number).where(subscription_resend.c.subscription_id == subscription_id).exists()


def claim(limit: int) -> list[SimpleNamespace]:
    """Lease up to `limit` subscriptions that have something to send now; their delivery state, as leased."""
    now = dates.now()
    state = subscription_state.c
    with db.read_session() as session:
        due = session.execute(
            select(state.subscription_id).where(
                state.status != "off", state.next_attempt_at <= now,
                or_(state.lease_until.is_(None), state.lease_until < now),
                or_(state.events_count > state.delivered_through, state.status == "requested", state.heartbeat_at <= now,
                    _resend_of(state.subscription_id)),
            ).order_by(state.next_attempt_at).limit(limit)
        ).scalars().all()
    if not due:
        return []
    # One statement. It leaves out a subscription another process leased meanwhile, and one whose row a writer holds
    # (its event counter, until commit; the commit wakes this worker again): waiting for it could deadlock, as the
    # writer may be waiting for a row this claim took.
    free = (select(state.subscription_id).where(state.subscription_id.in_(due), or_(state.lease_until.is_(None), state.lease_until < now))
            .order_by(state.subscription_id).with_for_update(skip_locked=True))
    with db.transaction() as session:
        return [SimpleNamespace(**row._mapping) for row in session.execute(
            update(subscription_state).where(state.subscription_id.in_(free.scalar_subquery()))
            .values(lease_until=now + timedelta(seconds=get_settings().subscription_lease_seconds))
            .returning(*subscription_state.c, _resend_of(state.subscription_id).label("resend")))]


@dataclass
class Delivery:
    """A claimed subscription, what it is to be sent, and after sending, what to record."""

    state: SimpleNamespace
    pending: list[notifications.Event]  # the stream: events not yet acknowledged, in number order
    again: list[notifications.Event]  # chosen for a replay
    changes: dict[str, Any] = field(default_factory=dict)
    sent_again: list[int] = field(default_factory=list)
    finished_at: float = 0.0  # time.monotonic()


def prepare(states: list[SimpleNamespace]) -> list[Delivery]:
    """Read what each claimed subscription is to be sent: the stream's pending events of all of them at once."""
    with db.read_session() as session:
        pending = notifications.pending(session, [(s.subscription_id, s.delivered_through, s.max_count, s.content == "full-resource")
                                                  for s in states])
        return [Delivery(s, pending.get(s.subscription_id, []), notifications.events(
            session, s.subscription_id, 0, None, s.max_count, with_content=s.content == "full-resource", resend=True) if s.resend else [])
                for s in states]


def send(delivery: Delivery, client: httpx.Client) -> None:
    """POST the handshake, the pending events, the events to send again, or a heartbeat; note in `changes` what the
    subscriber acknowledged, even when a later POST fails."""
    state, pending, again = delivery.state, delivery.pending, delivery.again
    changes = delivery.changes
    changes.update(lease_until=None, delivered_through=state.delivered_through, heartbeat_at=state.heartbeat_at, status=state.status)
    status = state.status
    try:
        if status == "requested":
            _post(state, client, notifications.bundle(state, "handshake", []))
            status = "active"
        shown = SimpleNamespace(**(vars(state) | {"status": status}))
        if pending:
            _post(state, client, notifications.bundle(shown, "event-notification", pending))
            changes["delivered_through"] = pending[-1].number
        if again:
            _post(state, client, notifications.bundle(shown, "event-notification", again))
            delivery.sent_again = [item.number for item in again]
        if not pending and not again and state.heartbeat_seconds and state.status != "requested":
            _post(state, client, notifications.bundle(state, "heartbeat", []))
        changes.update(status="active" if status == "error" else status, failures=0, last_error=None, next_attempt_at=dates.now())
        if state.heartbeat_seconds:
            changes["heartbeat_at"] = dates.now() + timedelta(seconds=state.heartbeat_seconds)
    except (httpx.HTTPError, DeliveryFailed) as error:
        failures = state.failures + 1
        message = str(error)[:500] if isinstance(error, DeliveryFailed) else f"{type(error).__name__} posting to the endpoint"
        changes.update(failures=failures, last_error=message, next_attempt_at=dates.now() + timedelta(seconds=backoff(failures)))
        if state.status == "requested" or failures >= get_settings().subscription_error_after:
            changes["status"] = "error"  # a failed handshake is an error at once (Backport IG)
        log.warning("subscription.delivery_failed", extra=fields(subscription=state.subscription_id, failures=failures, error=message))


def record(deliveries: list[Delivery]) -> None:
    """Release the subscriptions and keep how far each got, in one transaction (one statement for the usual case).
    Rows are updated in subscription order, the order in which writers lock them to count events (no deadlock)."""
    if not deliveries:
        return
    state = subscription_state.c
    deliveries = sorted(deliveries, key=lambda d: d.state.subscription_id)
    with db.transaction() as session:
        for delivery in deliveries:
            if delivery.changes["status"] != delivery.state.status:
                _write_status(session, delivery.state.subscription_id, delivery.changes["status"], delivery.changes["last_error"])
        session.execute(update(subscription_state).where(state.subscription_id == bindparam("id")),
                        [{"id": d.state.subscription_id} | d.changes for d in deliveries])
        for delivery in deliveries:
            if delivery.sent_again:
                session.execute(delete(subscription_resend).where(subscription_resend.c.subscription_id == delivery.state.subscription_id,
                                                                  subscription_resend.c.event_number.in_(delivery.sent_again)))


class DeliveryFailed(Exception):
    pass


def _post(state: SimpleNamespace, client: httpx.Client, body: dict[str, Any]) -> None:
    data = orjson.dumps(body)
    headers = dict(h.split(":", 1) for h in orjson.loads(state.headers))
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    headers.update({"Content-Type": state.content_type + "; fhirVersion=4.0", SIGNATURE_HEADER: sign(state.secret, data)})
    response = client.post(state.endpoint, content=data, headers=headers, timeout=post_timeout(state.timeout_seconds))
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"the endpoint answered {response.status_code}")


def _write_status(session: Session, subscription_id: str, status: str, error: str | None) -> None:
    """A new version of the Subscription showing the status the server gave it (its history shows each change)."""
    found = store.current(session, "Subscription", subscription_id, lock=True)
    content = store.content(session, "Subscription", subscription_id)
    if found is None or found.deleted or content is None:
        return
    content["status"] = status
    if error:
        content["error"] = error
    else:
        content.pop("error", None)
    store.write_versions(session, [store.Write("Subscription", subscription_id, "PUT", content, found)])


class Worker:
    """A thread per server process that keeps up to `subscription_delivery_threads` deliveries going on a pool: it
    claims as many due subscriptions as there are free threads, reads what they are owed in one query, and records
    finished ones together. A slow endpoint holds one thread, not the others' next deliveries."""

    def __init__(self) -> None:
        settings = get_settings()
        self._poll = settings.subscription_poll_seconds
        self._threads = settings.subscription_delivery_threads
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="qiao-delivery")
        self._client = httpx.Client(follow_redirects=False)
        self._stop = threading.Event()
        self._wake = threading.Event()  # a write raised events, or a delivery finished
        self._finished: queue.SimpleQueue[Delivery] = queue.SimpleQueue()  # from the pool's threads
        self._done: list[Delivery] = []  # finished, not yet recorded; the worker's thread only
        self._in_flight = 0  # claimed and not yet recorded; changed by the worker's thread only
        self._thread = threading.Thread(target=self._run, name="qiao-subscriptions", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        self._pool.shutdown(wait=True)
        self._collect()
        self._record_done()
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(GATHER_SECONDS if self._done else self._poll)
            self._wake.clear()
            try:
                while not self._stop.is_set() and self._step():
                    pass
            except Exception as error:  # noqa: BLE001 - keep delivering; the outbox keeps what was not sent
                log.error("subscription.worker_failed", exc_info=error, extra=fields(error=type(error).__name__))

    def _step(self) -> bool:
        """Record finished deliveries and start due ones, in batches (each a few round trips, whatever its size): once
        half the threads are done, or all, or the first finished GATHER_SECONDS ago. False when there was nothing to do."""
        self._collect()
        gathered = len(self._done) >= min(self._in_flight, max(self._threads // 2, 1))
        if self._done and not gathered and time.monotonic() - self._done[0].finished_at < GATHER_SECONDS:
            return False
        recorded = self._record_done()
        free = self._threads - self._in_flight
        claimed = claim(limit=free) if free > 0 else []
        for delivery in prepare(claimed) if claimed else []:
            self._in_flight += 1
            self._pool.submit(self._send, delivery)
        return bool(recorded or claimed)

    def _send(self, delivery: Delivery) -> None:
        try:
            send(delivery, self._client)
        except Exception as error:  # noqa: BLE001 - not recorded: the lease runs out and the events go again
            delivery.changes.clear()
            log.error("subscription.delivery_crashed", exc_info=error, extra=fields(error=type(error).__name__))
        finally:
            delivery.finished_at = time.monotonic()
            self._finished.put(delivery)
            self._wake.set()

    def _collect(self) -> None:
        """Take what the pool's threads finished into the worker's own list."""
        while not self._finished.empty():
            self._done.append(self._finished.get())

    def _record_done(self) -> int:
        """Record the finished deliveries in one transaction; how many."""
        done, self._done = self._done, []
        if done:
            self._in_flight -= len(done)
            record([d for d in done if d.changes])
        return len(done)

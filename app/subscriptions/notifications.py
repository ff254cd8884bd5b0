"""Notification Bundles (Backport IG on R4): a `history` Bundle whose first entry is the SubscriptionStatus as a
Parameters resource, then one entry per event as the payload content allows (empty, id-only, full-resource).
The same builder answers `$status` and `$events`."""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Row, Select, and_, or_, select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.store import dates
from app.store.tables import resource_version
from app.subscriptions.tables import subscription_event, subscription_resend


@dataclass(frozen=True)
class Event:
    number: int
    at: datetime
    res_type: str
    res_id: str
    version_id: int
    content: str | None  # the version the event was raised for (full-resource only)


def _base() -> str:
    return get_settings().base_url.rstrip("/")


def _reference(text: str) -> dict[str, str]:
    base = _base()
    return {"reference": f"{base}/{text}" if base else text}


def status_parameters(state: Any, kind: str, events: list[Event], *, content: str) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": _reference(f"Subscription/{state.subscription_id}")},
        {"name": "topic", "valueCanonical": state.topic},
        {"name": "status", "valueCode": state.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(state.events_count)},
    ]
    for item in events:
        parts: list[dict[str, Any]] = [{"name": "event-number", "valueString": str(item.number)},
                                       {"name": "timestamp", "valueInstant": dates.instant(item.at)}]
        if content != "empty":
            parts.append({"name": "focus", "valueReference": _reference(f"{item.res_type}/{item.res_id}")})
        parameters.append({"name": "notification-event", "part": parts})
    if state.status == "error" and state.last_error:
        parameters.append({"name": "error", "valueCodeableConcept": {"text": state.last_error}})
    return {"resourceType": "Parameters", "parameter": parameters}


def bundle(state: Any, kind: str, events: list[Event], *, content: str | None = None) -> dict[str, Any]:
    """A notification (handshake, heartbeat, event-notification) or a query-event answer."""
    content = content or state.content
    entries: list[dict[str, Any]] = [{
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": status_parameters(state, kind, events, content=content),
        "request": {"method": "GET", "url": f"Subscription/{state.subscription_id}/$status"},
        "response": {"status": "200"},
    }]
    if content != "empty":
        for item in events:
            entry: dict[str, Any] = {"request": {"method": "PUT", "url": f"{item.res_type}/{item.res_id}"},
                                     "response": {"status": "200", "etag": f'W/"{item.version_id}"'}}
            if _base():
                entry["fullUrl"] = f"{_base()}/{item.res_type}/{item.res_id}"
            if content == "full-resource" and item.content is not None:
                entry["resource"] = orjson.loads(item.content)
            entries.append(entry)
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "history", "timestamp": dates.instant(dates.now()),
            "entry": entries}


def pending(session: Session, wanted: list[tuple[str, int, int, bool]]) -> dict[str, list[Event]]:
    """For several subscriptions at once, (subscription, after, limit, with content): its events numbered above
    `after`, at most `limit`, oldest first. Event numbers have no gaps, so the range is exact."""
    found: dict[str, list[Event]] = {}
    for with_content in (False, True):
        ranges = [and_(subscription_event.c.subscription_id == sid, subscription_event.c.event_number > after,
                       subscription_event.c.event_number <= after + limit) for sid, after, limit, content in wanted if content == with_content]
        if ranges:
            statement = _select(with_content).where(or_(*ranges)).order_by(subscription_event.c.subscription_id, subscription_event.c.event_number)
            for row in session.execute(statement):
                found.setdefault(row.subscription_id, []).append(_event(row, with_content))
    return found


def _select(with_content: bool) -> Select[Any]:
    columns = [subscription_event.c.subscription_id, subscription_event.c.event_number, subscription_event.c.at,
               subscription_event.c.res_type, subscription_event.c.res_id, subscription_event.c.version_id]
    if not with_content:
        return select(*columns)
    return select(*columns, resource_version.c.content).outerjoin(resource_version, and_(
        resource_version.c.resource_pk == subscription_event.c.resource_pk, resource_version.c.version_id == subscription_event.c.version_id))


def events(session: Session, subscription_id: str, after: int, until: int | None, limit: int, *, with_content: bool,
           resend: bool = False) -> list[Event]:
    """The subscription's events numbered above `after` (and up to `until`), oldest first; with `resend`, only those
    chosen to be sent again."""
    statement = _select(with_content).where(subscription_event.c.subscription_id == subscription_id, subscription_event.c.event_number > after)
    if until is not None:
        statement = statement.where(subscription_event.c.event_number <= until)
    if resend:
        statement = statement.where(select(subscription_resend.c.event_number).where(
            subscription_resend.c.subscription_id == subscription_id,
            subscription_resend.c.event_number == subscription_event.c.event_number).exists())
    rows = session.execute(statement.order_by(subscription_event.c.event_number).limit(limit)).all()
    return [_event(row, with_content) for row in rows]


def _event(row: Row[Any], with_content: bool) -> Event:
    at = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)
    return Event(row.event_number, at, row.res_type, row.res_id, row.version_id, row.content if with_content else None)

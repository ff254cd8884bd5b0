"""What a subscriber (or an operator) asks of its Subscription: its status, the events it may have missed, and a
replay of what was already delivered, chosen by event number, resource, or when it was raised."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Row, and_, func, insert, or_, select, update
from sqlalchemy.orm import Session

from app.auth import policy
from app.config import get_settings
from app.errors import Conflict, InvalidRequest, NotFound
from app.fhir import resources
from app.store import dates
from app.store import repository as store
from app.subscriptions import notifications
from app.subscriptions.registry import CONTENTS
from app.subscriptions.tables import subscription_event, subscription_resend, subscription_state

MAX_EVENTS = 1000


def _state(session: Session, subscription_id: str, *, change: bool = False) -> Row[Any]:
    """The delivery state of a Subscription the caller may read (the read is checked and audited as any read), or
    with `change`, may change: its subscriber or an operator; the row is then locked until commit."""
    stored = store.read(session, "Subscription", subscription_id)
    statement = select(subscription_state).where(subscription_state.c.subscription_id == subscription_id)
    if change:
        principal = policy.principal_of(session)
        policy.require(principal, "Subscription", "u")
        policy.require_writable(session, principal, stored, stored.reference)
        statement = statement.with_for_update()
    state = session.execute(statement).first()
    if state is None:
        raise NotFound(f"Subscription/{subscription_id} has no delivery state", expression=["Subscription"])
    return state


def statuses(session: Session, ids: list[str]) -> dict[str, Any]:
    """$status: a searchset of SubscriptionStatus (query-status), one per Subscription."""
    if not ids:
        raise InvalidRequest("name at least one Subscription (id)", expression=["id"])
    entries = [{"resource": notifications.status_parameters(_state(session, i), "query-status", [], content="empty"),
                "search": {"mode": "match"}} for i in ids]
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}


def events(session: Session, subscription_id: str, since: int | None, until: int | None, content: str | None) -> dict[str, Any]:
    """$events: the stored events (query-event) from `since` to `until` inclusive, for a subscriber to recover."""
    state = _state(session, subscription_id)
    if content is not None and content not in CONTENTS:
        raise InvalidRequest(f"content must be one of {', '.join(CONTENTS)}", expression=["content"])
    content = content or state.content
    first = since if since is not None else max(state.events_count - MAX_EVENTS + 1, 1)
    found = notifications.events(session, subscription_id, first - 1, until, MAX_EVENTS, with_content=content == "full-resource")
    return notifications.bundle(state, "query-event", found, content=content)


@dataclass(frozen=True)
class Selection:
    """Which of a subscription's events to send again: every condition given must hold."""

    first: int | None = None  # event numbers, inclusive
    last: int | None = None
    types: tuple[str, ...] = ()  # the focus's resource type
    focus: tuple[str, ...] = ()  # "Task/123"
    raised_from: datetime | None = None  # raised at or after
    raised_before: datetime | None = None


#: The $replay parameters; the event numbers are named as in $events.
REPLAY_PARAMETERS = ("eventsSinceNumber", "eventsUntilNumber", "resourceType", "focus", "eventsSinceTime", "eventsUntilTime")


def selection(pairs: list[tuple[str, str]]) -> Selection:
    """A Selection from operation parameters; a time is a FHIR date, dateTime or instant (local zone if none)."""
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        if name not in REPLAY_PARAMETERS:
            raise InvalidRequest(f"$replay has no parameter {name!r} (it takes {', '.join(REPLAY_PARAMETERS)})", expression=[name])
        values.setdefault(name, []).append(value.strip())
    single = {name: found[0] for name, found in values.items() if name not in ("resourceType", "focus")}
    if any(len(found) > 1 for name, found in values.items() if name in single):
        raise InvalidRequest("give each of the number and time bounds once", expression=[n for n in single if len(values[n]) > 1])
    zone = get_settings().zone
    for name in ("resourceType", "focus"):
        for value in values.get(name, []):
            resource_type = value.split("/")[0]
            if not resources.is_resource_type(resource_type) or (name == "focus" and value.count("/") != 1):
                raise InvalidRequest(f"{name} {value!r} is not a " + ("resource type" if name == "resourceType" else "reference Type/id"),
                                     expression=[name])
    return Selection(first=_number(single, "eventsSinceNumber"), last=_number(single, "eventsUntilNumber"),
                     types=tuple(values.get("resourceType", [])), focus=tuple(values.get("focus", [])),
                     raised_from=_moment(single, "eventsSinceTime", zone, 0), raised_before=_moment(single, "eventsUntilTime", zone, 1))


def _number(values: dict[str, str], name: str) -> int | None:
    if name not in values:
        return None
    if not values[name].isdigit() or int(values[name]) < 1:
        raise InvalidRequest(f"{name} must be an event number (1 or more), not {values[name]!r}", expression=[name])
    return int(values[name])


def _moment(values: dict[str, str], name: str, zone: ZoneInfo, end: int) -> datetime | None:
    """The start (end=0) or the end (end=1) of the period a date or time names."""
    if name not in values:
        return None
    try:
        return dates.from_micros(dates.date_range(values[name], zone)[end])
    except dates.BadDate:
        raise InvalidRequest(f"{name} {values[name]!r} is not a FHIR date or time", expression=[name]) from None


@dataclass(frozen=True)
class Replayed:
    queued: int  # the delivered events this replay chose: each is sent again (once, if it was already waiting)
    pending: int  # events not yet delivered; they are sent in any case


def replay(session: Session, subscription_id: str, chosen: Selection) -> Replayed:
    """Send the chosen events that were already delivered again, with their own numbers, and try the subscriber now.
    Events not yet delivered are left to the stream, which sends them in order anyway. Who may change the
    Subscription may ask: its subscriber, or an operator."""
    state = _state(session, subscription_id, change=True)
    if state.status == "off":
        raise Conflict(f"Subscription/{subscription_id} is off; turn it on (status requested) before a replay", expression=["status"])
    event = subscription_event.c
    conditions = [event.subscription_id == subscription_id, event.event_number <= state.delivered_through]
    conditions += [event.event_number >= chosen.first] if chosen.first is not None else []
    conditions += [event.event_number <= chosen.last] if chosen.last is not None else []
    conditions += [event.res_type.in_(chosen.types)] if chosen.types else []
    conditions += [or_(*(and_(event.res_type == t, event.res_id == i) for t, i in (f.split("/") for f in chosen.focus)))] if chosen.focus else []
    conditions += [event.at >= chosen.raised_from] if chosen.raised_from is not None else []
    conditions += [event.at < chosen.raised_before] if chosen.raised_before is not None else []
    chosen_count = session.execute(select(func.count()).select_from(subscription_event).where(*conditions)).scalar_one()
    resend = subscription_resend.c
    waiting = select(resend.event_number).where(resend.subscription_id == subscription_id, resend.event_number == event.event_number)
    session.execute(insert(subscription_resend).from_select(
        ["subscription_id", "event_number"], select(event.subscription_id, event.event_number).where(*conditions, ~waiting.exists())))
    session.execute(update(subscription_state).where(subscription_state.c.subscription_id == subscription_id)
                    .values(failures=0, next_attempt_at=dates.now(), last_error=None))
    return Replayed(queued=int(chosen_count), pending=int(state.events_count - state.delivered_through))


def replay_outcome(subscription_id: str, replayed: Replayed) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [
        {"name": "subscription", "valueReference": {"reference": f"Subscription/{subscription_id}"}},
        {"name": "queued", "valueInteger": replayed.queued},
        {"name": "pending", "valueInteger": replayed.pending}]}


def overview(session: Session) -> list[dict[str, Any]]:
    """Every subscription's delivery state, for `qiao subscriptions list`."""
    state = subscription_state.c
    rows = session.execute(select(state.subscription_id, state.org, state.topic, state.endpoint, state.status, state.events_count,
                                  state.delivered_through, state.failures, state.last_error).order_by(state.subscription_id)).all()
    return [dict(row._mapping) | {"pending": row.events_count - row.delivered_through} for row in rows]

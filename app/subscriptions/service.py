"""What a subscriber (or an operator) asks of its Subscription: its status, the events it may have missed, and a
replay of what was already delivered."""

from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.orm import Session

from app.errors import InvalidRequest, NotFound
from app.store import dates
from app.store import repository as store
from app.subscriptions import notifications
from app.subscriptions.registry import CONTENTS
from app.subscriptions.tables import subscription_state

MAX_EVENTS = 1000


def _state(session: Session, subscription_id: str) -> Row[Any]:
    """The delivery state of a Subscription the caller may read (the read is checked and audited as any read)."""
    store.read(session, "Subscription", subscription_id)
    state = session.execute(select(subscription_state).where(subscription_state.c.subscription_id == subscription_id)).first()
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


def replay(session: Session, subscription_id: str, since: int) -> int:
    """Send again every event from number `since` (an operator's command); returns how many are now pending."""
    state = session.execute(select(subscription_state).where(subscription_state.c.subscription_id == subscription_id)).first()
    if state is None:
        raise NotFound(f"Subscription/{subscription_id} is not known", expression=["Subscription"])
    through = max(min(since - 1, state.delivered_through), 0)
    session.execute(update(subscription_state).where(subscription_state.c.subscription_id == subscription_id)
                    .values(delivered_through=through, failures=0, next_attempt_at=dates.now(), last_error=None))
    return int(state.events_count - through)


def overview(session: Session) -> list[dict[str, Any]]:
    """Every subscription's delivery state, for `qiao subscriptions list`."""
    state = subscription_state.c
    rows = session.execute(select(state.subscription_id, state.org, state.topic, state.endpoint, state.status, state.events_count,
                                  state.delivered_through, state.failures, state.last_error).order_by(state.subscription_id)).all()
    return [dict(row._mapping) | {"pending": row.events_count - row.delivered_through} for row in rows]

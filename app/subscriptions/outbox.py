"""The transactional outbox: a change that raises a topic is an event of every subscription that wants it, written
in the change's own transaction, so that an event exists exactly when its change committed.

Event numbers count per subscription. The counter's row stays locked until commit, so numbers follow commit order
and a receiver sees them in order without gaps (a gap is a missed notification: Backport IG, errors).
A subscription receives only what its subscriber may read: the same scopes and institution policy as a read.
"""

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import event, insert, select, update
from sqlalchemy.orm import Session

from app.auth import policy
from app.auth import scopes as scope_syntax
from app.auth.principal import Principal
from app.store.rules import WriteRule
from app.subscriptions import topics
from app.subscriptions.tables import subscription_event, subscription_state

LIVE = ("requested", "active", "error")  # an erroring subscription still counts its events (Backport IG, errors)
_RAISED = "subscriptions.raised"
TOPIC_TYPES = frozenset(t for topic in topics.TOPICS.values() for t in topic.types)
_wakers: list[Any] = []


def on_commit(wake: Any) -> None:
    """Call `wake()` after a transaction that raised events commits (the delivery worker of this process)."""
    _wakers.append(wake)


def forget(wake: Any) -> None:
    _wakers.remove(wake)


def after(session: Session, written: Sequence[Any], _principal: Principal) -> None:
    changed = [(s, orjson.loads(s.content)) for s in written if s.content is not None]
    raised = {url: [(s, c) for s, c in changed if s.resource_type in t.types and t.triggers(c)] for url, t in topics.TOPICS.items()}
    raised = {url: items for url, items in raised.items() if items}
    if not raised:
        return
    subscriptions = session.execute(select(subscription_state).where(
        subscription_state.c.topic.in_(list(raised)), subscription_state.c.status.in_(LIVE))
        .order_by(subscription_state.c.subscription_id)).all()  # one lock order: no deadlock between writers
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, str | None, str], list[bool]] = {}  # the policy depends on organization and access only
    for subscription in subscriptions:
        subscriber = Principal(subscription.client_id, subscription.org, scope_syntax.parse(subscription.scope), access=subscription.access)
        items = raised[subscription.topic]
        key = (subscription.topic, subscription.org, subscription.access)
        if key not in seen:
            seen[key] = policy.visible(session, subscriber, [s for s, _ in items])
        filters = [(t, [(n, list(v)) for n, v in p]) for t, p in orjson.loads(subscription.filters)]
        wanted = [s for (s, c), visible in zip(items, seen[key], strict=True)
                  if visible and policy.may(subscriber, s.resource_type, "r") and topics.matches(filters, c)]
        if not wanted:
            continue
        last = session.execute(
            update(subscription_state).where(subscription_state.c.subscription_id == subscription.subscription_id)
            .values(events_count=subscription_state.c.events_count + len(wanted)).returning(subscription_state.c.events_count)
        ).scalar_one()
        first = last - len(wanted) + 1
        rows.extend({"subscription_id": subscription.subscription_id, "event_number": first + i, "resource_pk": s.pk,
                     "version_id": s.version_id, "res_type": s.resource_type, "res_id": s.resource_id, "at": s.last_updated}
                    for i, s in enumerate(wanted))
    if rows:
        session.execute(insert(subscription_event), rows)
        session.info[_RAISED] = True


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(_RAISED, False):
        for wake in _wakers:
            wake()


RULE = WriteRule(TOPIC_TYPES, after=after)

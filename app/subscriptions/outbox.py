"""The transactional outbox: a change that raises a topic is an event of every subscription that wants it, written
in the change's own transaction, so that an event exists exactly when its change committed.

Event numbers count per subscription. The counter's row stays locked until commit, so numbers follow commit order
and a receiver sees them in order without gaps (a gap is a missed notification: Backport IG, errors).
A subscription receives only what its subscriber may read: the same scopes and institution policy as a read.
"""

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import case, event, insert, select, update
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
    changed = [(s, s.parsed()) for s in written if s.content is not None]
    raised = {url: [(s, c) for s, c in changed if s.resource_type in t.types and t.triggers(c)] for url, t in topics.TOPICS.items()}
    raised = {url: items for url, items in raised.items() if items}
    if not raised:
        return
    subscriptions = session.execute(select(subscription_state).where(
        subscription_state.c.topic.in_(list(raised)), subscription_state.c.status.in_(LIVE))).all()
    indexed: dict[int, Any] = {}  # a changed resource's index rows, for the filters: made once, not per subscription
    wanted: dict[str, tuple[Principal, list[int]]] = {}  # subscription → its subscriber, the positions its filters pass
    for subscription in subscriptions:
        subscriber = Principal(subscription.client_id, subscription.org, scope_syntax.parse(subscription.scope), access=subscription.access)
        filters = [(t, [(n, list(v)) for n, v in p]) for t, p in orjson.loads(subscription.filters)]
        positions = [i for i, (s, c) in enumerate(raised[subscription.topic])
                     if policy.may(subscriber, s.resource_type, "r") and topics.matches(filters, c, indexed)]
        if positions:
            wanted[subscription.subscription_id] = (subscriber, positions)
    if not wanted:
        return
    topic_of = {s.subscription_id: s.topic for s in subscriptions}
    seen = _visibility(session, raised, [(topic_of[sid], subscriber) for sid, (subscriber, _) in wanted.items()])
    chosen = {sid: kept for sid, (subscriber, positions) in wanted.items()
              if (kept := [i for i in positions if seen[(topic_of[sid], subscriber.organization, subscriber.access)][i]])}
    if not chosen:
        return
    rows: list[dict[str, Any]] = []
    for sid, last in _count(session, {sid: len(kept) for sid, kept in chosen.items()}):
        items = [raised[topic_of[sid]][i][0] for i in chosen[sid]]
        first = last - len(items) + 1
        rows.extend({"subscription_id": sid, "event_number": first + n, "resource_pk": s.pk, "version_id": s.version_id,
                     "res_type": s.resource_type, "res_id": s.resource_id, "at": s.last_updated} for n, s in enumerate(items))
    session.execute(insert(subscription_event), rows)
    session.info[_RAISED] = True


def _visibility(session: Session, raised: dict[str, list[tuple[Any, dict[str, Any]]]],
                subscribers: list[tuple[str, Principal]]) -> dict[tuple[str, str | None, str], list[bool]]:
    """What each subscriber may see of its topic's changes; the policy depends on organization and access only."""
    seen: dict[tuple[str, str | None, str], list[bool]] = {}
    for url, items in raised.items():
        distinct = {(p.organization, p.access): p for topic, p in subscribers if topic == url}
        if distinct:
            rows = [s for s, _ in items]
            for key, visible in zip(distinct, policy.visible_to_each(session, list(distinct.values()), rows), strict=True):
                seen[(url, *key)] = visible
    return seen


def _count(session: Session, counts: dict[str, int]) -> list[tuple[str, int]]:
    """Add each subscription's new events to its counter; (subscription, its last event number). The counter rows are
    locked in one order (no deadlock between writers) and stay locked until commit."""
    state = subscription_state.c
    ids = sorted(counts)
    session.execute(select(state.subscription_id).where(state.subscription_id.in_(ids)).order_by(state.subscription_id).with_for_update())
    added = case(*((state.subscription_id == sid, counts[sid]) for sid in ids), else_=0)
    return [(sid, last) for sid, last in session.execute(
        update(subscription_state).where(state.subscription_id.in_(ids)).values(events_count=state.events_count + added)
        .returning(state.subscription_id, state.events_count))]


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(_RAISED, False):
        for wake in _wakers:
            wake()


RULE = WriteRule(TOPIC_TYPES, after=after)

"""Service levels of the referral loop, and the escalations a missed one raises.

A referral sent (moved to `requested`) must be received within `escalate_not_received_hours` and accepted within
`escalate_not_accepted_hours`; a follow-up Task the loop opened must be done by its own due date
(`restriction.period.end`). Each write that starts such a clock records a deadline (`referral_deadline`); the clock's
escalations pass (app/clock.py) looks at the deadlines that passed and, for a Task still waiting, writes an
escalation: a Task of code `urn:qiao:task-code|escalation` whose focus is the late Task, owned by the party that has
to act, requested by the party that waits, and raised on the topic `urn:qiao:topic:escalation`. When the late Task
moves on, the same write completes its escalations, so a query for open escalations is the list of open loops.

Escalations are kept by Qiao alone (one per late Task and service level, with an id derived from both), so raising
one twice writes nothing the second time.
"""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import db
from app.auth.principal import SYSTEM, Principal
from app.config import get_settings
from app.errors import Forbidden
from app.referrals.stages import TASK_CODE_SYSTEM, has_task_code, is_follow_up, is_referral, machine, stage_of
from app.referrals.tables import referral_deadline
from app.store import dates
from app.store import repository as store

ESCALATION = "escalation"
REASON_SYSTEM = "urn:qiao:escalation-reason"
NOT_RECEIVED, NOT_ACCEPTED, FOLLOW_UP_OVERDUE = "not-received", "not-accepted", "follow-up-overdue"
OPEN = frozenset({"draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold"})
_IDS = uuid.UUID("6f1d3c52-5b0e-4c4e-9d0a-3c1f0e7a2b11")  # namespace of escalation ids


@dataclass(frozen=True)
class ServiceLevel:
    kind: str
    display: str
    #: Whether the service level is about this kind of Task (a referral, a follow-up).
    applies: Callable[[dict[str, Any] | None], bool]
    #: Whether such a Task is still waiting for what the service level asks.
    pending: Callable[[dict[str, Any]], bool]

    def waiting(self, task: dict[str, Any]) -> bool:
        return self.applies(task) and self.pending(task)


LEVELS = {
    level.kind: level for level in (
        ServiceLevel(NOT_RECEIVED, "转诊超时未接收", is_referral, lambda t: stage_of(t) == "requested"),
        ServiceLevel(NOT_ACCEPTED, "转诊超时未同意", is_referral, lambda t: stage_of(t) in ("requested", "received")),
        ServiceLevel(FOLLOW_UP_OVERDUE, "转诊随访逾期", is_follow_up, lambda t: t.get("status") in OPEN),
    )
}


def is_escalation(content: dict[str, Any] | None) -> bool:
    return has_task_code(content, ESCALATION)


def escalation_id(kind: str, task_id: str) -> str:
    return str(uuid.uuid5(_IDS, f"{kind}/{task_id}"))


def check(write: Any, previous: dict[str, Any] | None, principal: Principal) -> None:
    """Nobody but Qiao writes an escalation: it says a party was late, so that party must not be able to erase it."""
    if principal is not SYSTEM and (is_escalation(write.content) or is_escalation(previous)):
        raise Forbidden("escalations (Task.code urn:qiao:task-code|escalation) are kept by Qiao; they are completed when the "
                        "late referral or follow-up moves on", expression=["Task.code"])


def track(session: Session, stored: Any, task: dict[str, Any], sent: bool) -> None:
    """Record the deadlines this write of a referral or follow-up Task starts, and complete the escalations it
    resolves."""
    if not any(level.applies(task) for level in LEVELS.values()):
        return
    at = stored.last_updated
    deadlines: list[tuple[str, datetime]] = []
    if sent:
        settings = get_settings()
        for kind, hours in ((NOT_RECEIVED, settings.escalate_not_received_hours), (NOT_ACCEPTED, settings.escalate_not_accepted_hours)):
            if hours > 0:
                deadlines.append((kind, at + timedelta(hours=hours)))
    due = _follow_up_due(task)
    if due is not None and task.get("status") in OPEN:
        # a due date already past is due now: the pass that sees this write's time sees it (never one already run)
        deadlines.append((FOLLOW_UP_OVERDUE, max(due, at)))
    for kind, moment in deadlines:
        db.insert_unless_present(session, referral_deadline, {"task_id": stored.resource_id, "kind": kind, "due_at": dates.micros(moment)})
    if not stored.created:
        _resolve(session, stored.resource_id, task)


def _follow_up_due(task: dict[str, Any]) -> datetime | None:
    if not is_follow_up(task):
        return None
    return dates.start_of(((task.get("restriction") or {}).get("period") or {}).get("end"), get_settings().zone)


def _resolve(session: Session, task_id: str, task: dict[str, Any]) -> None:
    ids = [escalation_id(kind, task_id) for kind, level in LEVELS.items() if level.applies(task) and not level.pending(task)]
    if not ids:
        return  # still waiting on every service level it has (a sent referral's edits): nothing to look up
    found = store.current_many(session, "Task", ids, lock=True)
    writes = []
    for found_id, current in found.items():
        escalation = store.content(session, "Task", found_id)
        if current.deleted or escalation is None or escalation.get("status") not in OPEN:
            continue
        now = dates.instant(dates.now())
        escalation |= {"status": "completed", "lastModified": now, "statusReason": {"text": f"已处理：{_where(task)}"},
                       "executionPeriod": {**escalation.get("executionPeriod", {}), "end": now}}
        writes.append(store.Write("Task", found_id, "PUT", escalation, current))
    store.apply(session, writes, authorized=True)


def _where(task: dict[str, Any]) -> str:
    """Where the late Task has moved to, for the completed escalation's statusReason."""
    if is_referral(task):
        return machine().stages[stage_of(task)].display
    return str(task.get("status"))


# --- the clock's pass -------------------------------------------------------------------------------------------


def due(session: Session, after: int, until: int) -> list[str]:
    """The deadlines that passed in (after, until], microseconds since the epoch: "kind task_id due_at"."""
    d = referral_deadline.c
    rows = session.execute(select(d.kind, d.task_id, d.due_at).where(d.due_at > after, d.due_at <= until)
                           .order_by(d.due_at, d.task_id, d.kind))
    return [f"{kind} {task_id} {due_at}" for kind, task_id, due_at in rows]


def escalate(session: Session, keys: list[str]) -> int:
    """Raise an escalation for each Task still waiting at its passed deadline (unless raised already); how many."""
    wanted: dict[str, tuple[ServiceLevel, str, datetime]] = {}
    for key in keys:
        kind, task_id, due_at = key.split(" ")
        wanted[escalation_id(kind, task_id)] = (LEVELS[kind], task_id, dates.from_micros(int(due_at)))
    raised = store.current_many(session, "Task", wanted)
    tasks = store.current_many(session, "Task", {task_id for _, task_id, _ in wanted.values()}, lock=True)
    now = dates.now()
    writes = []
    for id_, (level, task_id, deadline) in wanted.items():
        task = store.content(session, "Task", task_id) if task_id in tasks and not tasks[task_id].deleted else None
        if id_ in raised or task is None or not level.waiting(task):
            continue
        if level.kind == FOLLOW_UP_OVERDUE:
            deadline = _follow_up_due(task) or deadline
            if deadline > now:
                continue  # its due date was moved later: the deadline recorded with it will come
        writes.append(store.Write("Task", id_, "POST", _escalation(id_, level, task_id, task, deadline, now), None))
    store.apply(session, writes, authorized=True)
    return len(writes)


def _escalation(id_: str, level: ServiceLevel, task_id: str, task: dict[str, Any], deadline: datetime, now: datetime) -> dict[str, Any]:
    zone = get_settings().zone
    return {
        "resourceType": "Task", "id": id_, "status": "requested", "intent": "order", "priority": "urgent",
        "code": {"coding": [{"system": TASK_CODE_SYSTEM, "code": ESCALATION, "display": "转诊超时提醒"}], "text": level.display},
        "reasonCode": {"coding": [{"system": REASON_SYSTEM, "code": level.kind, "display": level.display}], "text": level.display},
        "description": f"{level.display}（时限 {deadline.astimezone(zone):%Y-%m-%d %H:%M}）",
        "focus": {"reference": f"Task/{task_id}"}, "for": task.get("for"),
        "authoredOn": dates.instant(now), "lastModified": dates.instant(now), "executionPeriod": {"start": dates.instant(now)},
        "requester": task.get("requester"), "owner": task.get("owner"),
        "restriction": {"period": {"end": dates.instant(deadline)}},
    }

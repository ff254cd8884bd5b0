"""The referral indicators' cases, from the referral workflow's Tasks and their trail of moves:

- referral-closed-loop-rate: upward referrals sent in the period (their first move to `requested`); closed when the
  hospital has completed the Task (its outcome came back) and the community has completed the follow-up the
  referral opened (基本公卫: 2周内主动随访转诊情况). Counted under the referring organization, as things stand when
  evaluated.
- followup-completion-rate: referral follow-up Tasks opened in the period; done when completed by their due date
  (`restriction.period.end`). One still open and not yet due when evaluated is not yet countable (excluded).
- referral-time-to-accept, referral-time-to-complete: for each upward referral sent in the period, the hours from
  its first move to `requested` to its first move to `accepted` (`completed`), counted under the receiving
  organization (the party whose speed it is); one that has not got there is excluded from the measure population.
- referral-escalation-resolution-rate: escalations raised in the period (a referral not received or not accepted in
  time, a follow-up overdue), counted under the party that was late; resolved when the late Task has moved on.
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import policy
from app.auth.principal import Principal
from app.auth.relations import reference_id
from app.cdc import registries
from app.cdc.cases import Case, case, measured
from app.cdc.population import Period
from app.config import get_settings
from app.referrals import escalations as escalation_tasks
from app.referrals import stages, workflow
from app.referrals.tables import referral_transition
from app.store import dates, query
from app.store.query import Sql

DONE = "completed"
CHUNK = 5_000  # ids a statement names at most
REACHED = {"time-to-accept": "accepted", "time-to-complete": "completed"}  # the stage a time measure runs to


def closed_loop(session: Session, period: Period, principal: Principal) -> list[Case]:
    referrals = _upward_sent(session, period, principal)
    follow_ups: dict[str, list[dict[str, Any]]] = {}
    for task in _parts(session, list(referrals)):
        for parent in task.get("partOf") or []:
            follow_ups.setdefault(reference_id(parent, "Task") or "", []).append(task)
    under = _counted_under(session, referrals, "requester")
    cases = []
    for task_id, task in referrals.items():
        mine = [f for f in follow_ups.get(task_id, []) if f.get("status") not in ("cancelled", "entered-in-error")]
        closed = task.get("status") == DONE and bool(mine) and all(f.get("status") == DONE for f in mine)
        cases.append(case(f"Task/{task_id}", *under[task_id], counted=True, met=closed))
    return cases


def time_to(session: Session, period: Period, principal: Principal, stage: str) -> list[Case]:
    referrals = _upward_sent(session, period, principal)
    first = _first_moves(session, list(referrals), ("requested", stage))
    under = _counted_under(session, referrals, "owner")
    cases = []
    for task_id in referrals:
        sent, reached = first.get((task_id, "requested")), first.get((task_id, stage))
        hours = round((reached - sent).total_seconds() / 3600, 2) if sent is not None and reached is not None else None
        cases.append(measured(f"Task/{task_id}", *under[task_id], hours))
    return cases


def escalations(session: Session, period: Period, principal: Principal) -> list[Case]:
    sql = Sql()
    raised = _tasks(session, sql, _coded_in(sql, period, escalation_tasks.ESCALATION), principal)
    under = _counted_under(session, raised, "owner")
    return [case(f"Task/{task_id}", *under[task_id], counted=True, met=task.get("status") == DONE) for task_id, task in raised.items()]


def _upward_sent(session: Session, period: Period, principal: Principal) -> dict[str, dict[str, Any]]:
    """Upward referral Tasks first sent (moved to `requested`) in the period."""
    sql = Sql()
    start, end = sql.param(period.start, query.TIMESTAMP), sql.param(period.end, query.TIMESTAMP)
    where = ["r.res_type = 'Task'", "r.deleted = FALSE",
             "r.res_id IN (SELECT x.task_id FROM referral_transition x WHERE x.to_stage = 'requested' GROUP BY x.task_id"
             f" HAVING MIN(x.at) >= {start} AND MIN(x.at) < {end})",
             "EXISTS (SELECT 1 FROM search_reference f JOIN resource s ON s.res_type = 'ServiceRequest' AND s.res_id = f.target_id"
             " JOIN search_token c ON c.resource_pk = s.pk AND c.res_type = 'ServiceRequest' AND c.param = 'category'"
             f"  AND c.system = {sql.constant(workflow.DIRECTION_SYSTEM)} AND c.code = 'upward'"
             " WHERE f.resource_pk = r.pk AND f.res_type = 'Task' AND f.param = 'focus' AND f.target_type = 'ServiceRequest')"]
    return _tasks(session, sql, where, principal)


def _first_moves(session: Session, task_ids: list[str], to_stages: Sequence[str]) -> dict[tuple[str, str], datetime]:
    """When each of these Tasks first moved to each of these stages."""
    t = referral_transition.c
    found: dict[tuple[str, str], datetime] = {}
    for at in range(0, len(task_ids), CHUNK):
        rows = session.execute(select(t.task_id, t.to_stage, func.min(t.at))
                               .where(t.task_id.in_(task_ids[at:at + CHUNK]), t.to_stage.in_(to_stages))
                               .group_by(t.task_id, t.to_stage))
        found |= {(task_id, stage): moment for task_id, stage, moment in rows}
    return found


def _coded_in(sql: Sql, period: Period, code: str) -> list[str]:
    """Conditions for Tasks of Qiao's task code `code` authored in the period."""
    start, end = sql.param(dates.micros(period.start)), sql.param(dates.micros(period.end))
    return ["r.res_type = 'Task'", "r.deleted = FALSE",
            "EXISTS (SELECT 1 FROM search_token k WHERE k.resource_pk = r.pk AND k.res_type = 'Task' AND k.param = 'code'"
            f" AND k.system = {sql.constant(stages.TASK_CODE_SYSTEM)} AND k.code = {sql.param(code)})",
            "EXISTS (SELECT 1 FROM search_date a WHERE a.resource_pk = r.pk AND a.res_type = 'Task' AND a.param = 'authored-on'"
            f" AND a.low >= {start} AND a.low < {end})"]


def followup_completion(session: Session, period: Period, principal: Principal) -> list[Case]:
    sql = Sql()
    tasks = _tasks(session, sql, _coded_in(sql, period, stages.FOLLOW_UP), principal)
    under = _counted_under(session, tasks, "owner")
    now = dates.now()
    cases = []
    for task_id, task in tasks.items():
        if task.get("status") in ("cancelled", "entered-in-error"):
            continue
        due = _moment(((task.get("restriction") or {}).get("period") or {}).get("end"))
        done_at = _completed_at(task)
        on_time = done_at is not None and (due is None or done_at <= due)
        countable = done_at is not None or due is None or due <= now
        cases.append(case(f"Task/{task_id}", *under[task_id], counted=countable, met=on_time))
    return cases


def _tasks(session: Session, sql: Sql, where: list[str], principal: Principal) -> dict[str, dict[str, Any]]:
    policy.require(principal, "Task", "r")
    visible = policy.visible_sql(sql, principal, "r", ["Task"])
    if visible:
        where = [*where, visible]
    rows = session.execute(sql.statement(
        "SELECT r.res_id, CAST(v.content AS TEXT) FROM resource r"
        " JOIN resource_version v ON v.resource_pk = r.pk AND v.version_id = r.version_id"
        f" WHERE {' AND '.join(where)}"), sql.params)
    return {res_id: orjson.loads(text) for res_id, text in rows}


def _parts(session: Session, task_ids: list[str]) -> list[dict[str, Any]]:
    """The follow-up Tasks that are part of these referrals."""
    found = []
    for at in range(0, len(task_ids), CHUNK):
        sql = Sql()
        ids = ", ".join(sql.param(t) for t in task_ids[at:at + CHUNK])
        rows = session.execute(sql.statement(
            "SELECT CAST(v.content AS TEXT) FROM search_reference p JOIN resource r ON r.pk = p.resource_pk"
            " JOIN resource_version v ON v.resource_pk = r.pk AND v.version_id = r.version_id"
            f" WHERE p.res_type = 'Task' AND p.param = 'part-of' AND p.target_type = 'Task' AND p.target_id IN ({ids})"
            " AND r.deleted = FALSE"), sql.params)
        for (text,) in rows:
            task = orjson.loads(text)
            if stages.is_follow_up(task):
                found.append(task)
    return found


def _counted_under(session: Session, tasks: dict[str, dict[str, Any]], element: str) -> dict[str, tuple[str | None, str | None]]:
    """Where each Task counts: the Organization in `element` (requester or owner) and its GB/T 2260 district."""
    orgs = {task_id: reference_id(task.get(element), "Organization") for task_id, task in tasks.items()}
    found = registries.read_organizations(session, {o for o in orgs.values() if o})
    districts = {org_id: registries.district_of(content) for org_id, content in found.items()}
    return {task_id: (org, districts.get(org or "")) for task_id, org in orgs.items()}


def _completed_at(task: dict[str, Any]) -> datetime | None:
    """When a completed Task was done: the end of its execution, else its last modification, else when stored."""
    if task.get("status") != DONE:
        return None
    for value in ((task.get("executionPeriod") or {}).get("end"), task.get("lastModified"), (task.get("meta") or {}).get("lastUpdated")):
        moment = _moment(value)
        if moment is not None:
            return moment
    return None


def _moment(value: Any) -> datetime | None:
    return dates.start_of(value, get_settings().zone)

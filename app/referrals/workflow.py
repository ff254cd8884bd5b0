"""The referral workflow: a referral Task (one whose focus is a ServiceRequest) moves only along stages.yaml, by the
actor the table names; every move is kept (who, when, why); and an upward referral's moves open what the closed loop
needs next: the community's two-week follow-up when it is sent, the downward referral and the family doctor's
follow-up when the hospital completes it.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import yaml
from sqlalchemy import insert
from sqlalchemy.orm import Session

from app.auth.principal import SYSTEM, Principal
from app.auth.relations import reference_id
from app.config import get_settings
from app.errors import Conflict, Forbidden, Unprocessable
from app.referrals.tables import referral_transition
from app.store import dates
from app.store import repository as store
from app.store.rules import WriteRule

STAGES_FILE = Path(__file__).with_name("stages.yaml")
TASK_CODE_SYSTEM = "urn:qiao:task-code"
FOLLOW_UP = "referral-follow-up"
DIRECTION_SYSTEM = "urn:qiao:referral-direction"
UPWARD, DOWNWARD = "upward", "downward"
REFERRAL_CATEGORY = {"system": "http://snomed.info/sct", "code": "3457005", "display": "Patient referral"}
REQUESTER, OWNER = "requester", "owner"
_MOVES = "referral.moves"  # session.info: Task id → the move its check allowed, for `after` to record


@dataclass(frozen=True)
class Stage:
    code: str
    status: str
    display: str
    bser: str | None = None
    needs_reason: bool = False


@dataclass(frozen=True)
class Machine:
    system: str
    stages: dict[str, Stage]
    by_status: dict[str, str]
    initial: frozenset[str]
    transitions: dict[str, dict[str, str]] = field(default_factory=dict)

    def allowed(self, stage: str, roles: set[str]) -> list[str]:
        return [to for to, actor in self.transitions.get(stage, {}).items() if actor in roles]


@dataclass(frozen=True)
class Move:
    from_stage: str | None
    to_stage: str
    role: str


@cache
def machine() -> Machine:
    data = yaml.safe_load(STAGES_FILE.read_text(encoding="utf-8"))
    stages = {code: Stage(code, **spec) for code, spec in data["stages"].items()}
    return Machine(data["system"], stages, data["by_status"], frozenset(data["initial"]), data["transitions"])


def is_referral(content: dict[str, Any] | None) -> bool:
    return bool(content) and content.get("resourceType") == "Task" and reference_id(content.get("focus"), "ServiceRequest") is not None  # type: ignore[union-attr]


def stage_of(content: dict[str, Any]) -> str:
    """The stage a Task is in: its businessStatus from Qiao's CodeSystem, else the one its status means."""
    rules = machine()
    codes = [c.get("code") for c in (content.get("businessStatus") or {}).get("coding") or [] if c.get("system") == rules.system]
    status = str(content.get("status"))
    if codes:
        stage = rules.stages.get(str(codes[0]))
        if stage is None:
            raise Unprocessable(f"businessStatus {codes[0]!r} is not a stage of {rules.system} (known: {', '.join(rules.stages)})",
                                expression=["Task.businessStatus"])
        if stage.status != status:
            raise Unprocessable(f"businessStatus {stage.code!r} goes with status {stage.status!r}, not {status!r}",
                                expression=["Task.status"])
        return stage.code
    return rules.by_status[status]


def _roles(principal: Principal, content: dict[str, Any]) -> set[str]:
    if principal.unrestricted:
        return {REQUESTER, OWNER}
    org = principal.organization
    roles = set()
    if org and reference_id(content.get("requester"), "Organization") == org:
        roles.add(REQUESTER)
    if org and reference_id(content.get("owner"), "Organization") == org:
        roles.add(OWNER)
    return roles


def check(session: Session, write: Any, principal: Principal) -> None:
    """Refuse a move the table does not allow this actor; complete businessStatus; note the move for `after`."""
    previous = store.content(session, "Task", write.resource_id) if write.current and not write.current.deleted else None
    content = write.content
    if not is_referral(content) and not is_referral(previous):
        return
    rules = machine()
    if content is None:
        if principal is not SYSTEM and stage_of(previous) != "draft":  # type: ignore[arg-type]
            raise Conflict("a referral Task that was sent is never deleted; move it to entered-in-error instead", expression=["Task"])
        return
    stage = rules.stages[stage_of(content)]
    content["businessStatus"] = _business(stage.code)
    roles = _roles(principal, content)
    if previous is None:
        if REQUESTER not in roles:
            raise Forbidden(f"a referral is sent by its requester; {principal.organization} is not Task.requester",
                            expression=["Task.requester"])
        if stage.code not in rules.initial and not principal.unrestricted:
            raise Conflict(f"a referral Task starts as {' or '.join(sorted(rules.initial))}, not {stage.code!r}",
                           expression=["Task.status"])
        _note(session, write.resource_id, Move(None, stage.code, REQUESTER))
        return
    old = stage_of(previous)
    _keep_parties(previous, content, roles, old)
    if old == stage.code:
        return
    actor = rules.transitions.get(old, {}).get(stage.code)
    if actor is None or actor not in roles:
        allowed = rules.allowed(old, roles)
        raise Conflict(
            f"a referral Task in stage {old!r} cannot be moved to {stage.code!r} by "
            f"{' and '.join(sorted(roles)) or 'a party other than its requester or owner'}; allowed: {', '.join(allowed) or 'none'}",
            expression=["Task.status", "Task.businessStatus"],
        )
    if stage.needs_reason and not content.get("statusReason"):
        raise Unprocessable(f"moving a referral to {stage.code!r} needs a statusReason saying why", expression=["Task.statusReason"])
    if stage.code == "completed" and not content.get("output"):
        raise Unprocessable("a completed referral carries its outcome (consultation or discharge summary, plan) in Task.output",
                            expression=["Task.output"])
    _note(session, write.resource_id, Move(old, stage.code, actor))


def _keep_parties(previous: dict[str, Any], content: dict[str, Any], roles: set[str], stage: str) -> None:
    """The resident, the referral and its sender never change; only the sender re-routes, and only before receipt."""
    for element in ("for", "focus", "requester"):
        if previous.get(element) != content.get(element):
            raise Conflict(f"Task.{element} of a referral cannot change", expression=[f"Task.{element}"])
    if previous.get("owner") != content.get("owner") and (REQUESTER not in roles or stage not in ("draft", "requested")):
        raise Conflict("only the requester re-routes a referral (Task.owner), and only before it was received",
                       expression=["Task.owner"])


def _note(session: Session, task_id: str, move: Move) -> None:
    session.info.setdefault(_MOVES, {})[task_id] = move


def after(session: Session, written: Sequence[Any], principal: Principal) -> None:
    """Record each move, then open what it calls for."""
    moves: dict[str, Move] = session.info.get(_MOVES, {})
    for stored in written:
        move = moves.pop(stored.resource_id, None)
        if stored.deleted or stored.content is None:
            continue
        content = orjson.loads(stored.content)
        if not is_referral(content):
            continue
        if move is None:
            if not stored.created:
                continue  # an edit within a stage
            move = Move(None, stage_of(content), "server")
        session.execute(insert(referral_transition).values(
            task_id=stored.resource_id, version_id=stored.version_id, from_stage=move.from_stage, to_stage=move.to_stage,
            actor_role=move.role, actor_org=principal.organization, actor_client=principal.client_id,
            reason=_reason(content), at=stored.last_updated))
        _follow_on(session, stored, content, move, principal)


def _reason(content: dict[str, Any]) -> str | None:
    reason = content.get("statusReason") or {}
    text = reason.get("text") or next((c.get("display") or c.get("code") for c in reason.get("coding") or []), None)
    return str(text)[:500] if text else None


def _follow_on(session: Session, stored: Any, task: dict[str, Any], move: Move, principal: Principal) -> None:
    request_id = reference_id(task.get("focus"), "ServiceRequest")
    request = store.content(session, "ServiceRequest", request_id) if request_id else None
    if request is None or direction(request) != UPWARD:
        return
    settings = get_settings()
    now = stored.last_updated
    community = task.get("requester")
    if move.to_stage == "requested":
        # 基本公卫: after an up-referral the community follows it up within two weeks (an open loop until done)
        _create(session, principal, [follow_up(task, stored.resource_id, owner=community, requester=community,
                                               due=now + timedelta(days=settings.referral_followup_days), text="2周内主动随访转诊情况")])
    elif move.to_stage == "completed":
        down_request, down_task = downward(task, request, stored)
        follow = follow_up(down_task, down_task["id"], owner=community, requester=task.get("owner"),
                           due=now + timedelta(days=settings.referral_downward_followup_days), text="下转后随访（家庭医生）")
        _create(session, principal, [down_request, down_task, follow])


def direction(request: dict[str, Any]) -> str | None:
    for category in request.get("category") or []:
        for coding in category.get("coding") or []:
            if coding.get("system") == DIRECTION_SYSTEM:
                return str(coding.get("code"))
    return None


def follow_up(task: dict[str, Any], task_id: str, *, owner: Any, requester: Any, due: Any, text: str) -> dict[str, Any]:
    """A due item for the community, part of referral Task `task_id`: done when its owner completes it, an open loop
    once `due` has passed."""
    return {
        "resourceType": "Task", "id": store.new_id(), "status": "requested", "intent": "order",
        "code": {"coding": [{"system": TASK_CODE_SYSTEM, "code": FOLLOW_UP, "display": "转诊随访"}], "text": text},
        "description": text, "for": task.get("for"), "basedOn": [task["focus"]], "partOf": [{"reference": f"Task/{task_id}"}],
        "authoredOn": dates.instant(dates.now()), "requester": requester, "owner": owner,
        "restriction": {"period": {"end": dates.instant(due)}},
    }


def downward(task: dict[str, Any], request: dict[str, Any], stored: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The downward referral the hospital's completion opens: back to the community, carrying the outcome."""
    now = dates.instant(dates.now())
    hospital, community = task.get("owner"), task.get("requester")
    outcome = [o["valueReference"] for o in task.get("output") or [] if isinstance(o.get("valueReference"), dict)]
    down_request = {
        "resourceType": "ServiceRequest", "id": store.new_id(), "status": "active", "intent": "order",
        "category": [{"coding": [REFERRAL_CATEGORY, {"system": DIRECTION_SYSTEM, "code": DOWNWARD, "display": "下转"}]}],
        "code": request.get("code") or {"text": "下转随访管理"}, "subject": request.get("subject") or task.get("for"),
        "authoredOn": now, "requester": hospital, "performer": [community] if community else [],
        "basedOn": [{"reference": f"ServiceRequest/{request['id']}"}], "reasonCode": request.get("reasonCode") or [],
        **({"supportingInfo": outcome} if outcome else {}),
    }
    down_task = {
        "resourceType": "Task", "id": store.new_id(), "status": "requested", "intent": "order",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "businessStatus": _business("requested"), "focus": {"reference": f"ServiceRequest/{down_request['id']}"},
        "for": task.get("for"), "partOf": [{"reference": f"Task/{stored.resource_id}"}],
        "basedOn": [{"reference": f"ServiceRequest/{request['id']}"}], "authoredOn": now,
        "requester": hospital, "owner": community, "input": [
            {"type": {"text": "上转结果"}, "valueReference": ref} for ref in outcome],
    }
    return down_request, down_task


def _business(code: str) -> dict[str, Any]:
    stage = machine().stages[code]
    return {"coding": [{"system": machine().system, "code": code, "display": stage.display}], "text": stage.display}


def _create(session: Session, principal: Principal, resources: list[dict[str, Any]]) -> None:
    """Written by the server on the actor's behalf (audited as theirs), sent as the actor's organization."""
    writes = [store.Write(r["resourceType"], r["id"], "POST", r, None, org=principal.organization) for r in resources]
    store.apply(session, writes, authorized=True)


RULE = WriteRule(frozenset({"Task"}), check=check, after=after)

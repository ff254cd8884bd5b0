"""The referral workflow: a referral Task (one whose focus is a ServiceRequest) moves only along stages.yaml, by the
actor the table names; every move is kept (who, when, why); and an upward referral's moves open what the closed loop
needs next: the community's two-week follow-up when it is sent, the downward referral and the family doctor's
follow-up when the hospital completes it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from app.auth.principal import SYSTEM, Principal
from app.auth.relations import reference_id
from app.config import get_settings
from app.errors import Conflict, Forbidden, Unprocessable
from app.referrals import escalations
from app.referrals.stages import FOLLOW_UP, TASK_CODE_SYSTEM, business_status, is_referral, machine, stage_of
from app.referrals.tables import referral_transition
from app.store import dates
from app.store import repository as store
from app.store.rules import WriteRule

DIRECTION_SYSTEM = "urn:qiao:referral-direction"
UPWARD, DOWNWARD = "upward", "downward"
REFERRAL_CATEGORY = {"system": "http://snomed.info/sct", "code": "3457005", "display": "Patient referral"}
REQUESTER, OWNER = "requester", "owner"
_MOVES = "referral.moves"  # session.info: Task id → the move its check allowed, for `after` to record


@dataclass(frozen=True)
class Move:
    from_stage: str | None
    to_stage: str
    role: str


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
    escalations.check(write, previous, principal)
    if not is_referral(content) and not is_referral(previous):
        return
    rules = machine()
    if content is None:
        if principal is not SYSTEM and stage_of(previous) != "draft":  # type: ignore[arg-type]
            raise Conflict("a referral Task that was sent is never deleted; move it to entered-in-error instead", expression=["Task"])
        return
    stage = rules.stages[stage_of(content)]
    content["businessStatus"] = business_status(stage.code)
    if stage.code == "requested" and reference_id(content.get("owner"), "Organization") is None:
        raise Unprocessable("a referral is sent to a receiving organization: Task.owner names it", expression=["Task.owner"])
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


def server_move(session: Session, task_id: str, from_stage: str, to_stage: str) -> None:
    """Announce a move the server itself is about to write (its writes skip `check`), so that it is kept too."""
    _note(session, task_id, Move(from_stage, to_stage, "server"))


def after(session: Session, written: Sequence[Any], principal: Principal) -> None:
    """Record each move, then open what it calls for."""
    moves: dict[str, Move] = session.info.get(_MOVES, {})
    for stored in written:
        move = moves.pop(stored.resource_id, None)
        if stored.deleted or stored.content is None:
            continue
        content = stored.parsed()
        if move is None and stored.created and is_referral(content):
            move = Move(None, stage_of(content), "server")
        escalations.track(session, stored, content, sent=move is not None and move.to_stage == "requested")
        if move is None:
            continue  # not a referral, or an edit within a stage
        session.execute(insert(referral_transition).values(
            task_id=stored.resource_id, version_id=stored.version_id, from_stage=move.from_stage, to_stage=move.to_stage,
            actor_role=move.role, actor_org=principal.organization, actor_client=principal.client_id,
            reason=_reason(content), at=stored.last_updated))
        if move.from_stage == "draft":
            _settle_request(session, content, move.to_stage)
        _follow_on(session, stored, content, move, principal)


def _reason(content: dict[str, Any]) -> str | None:
    reason = content.get("statusReason") or {}
    text = reason.get("text") or next((c.get("display") or c.get("code") for c in reason.get("coding") or []), None)
    return str(text)[:500] if text else None


SETTLED_REQUEST = {"requested": "active", "cancelled": "revoked", "entered-in-error": "entered-in-error"}


def _settle_request(session: Session, task: dict[str, Any], stage: str) -> None:
    """A draft referral sent or dropped takes its ServiceRequest along (still a draft: nobody has ordered it yet),
    so that confirming a draft is one write; a sent one names the receiver as its performer."""
    request_id = reference_id(task.get("focus"), "ServiceRequest")
    if stage not in SETTLED_REQUEST or request_id is None:
        return
    current = store.current(session, "ServiceRequest", request_id, lock=True)
    request = store.content(session, "ServiceRequest", request_id) if current is not None else None
    if request is None or request.get("status") != "draft":
        return
    request["status"] = SETTLED_REQUEST[stage]
    if stage == "requested" and not request.get("performer"):
        request["performer"] = [task["owner"]]
    store.apply(session, [store.Write("ServiceRequest", request["id"], "PUT", request, current)], authorized=True)


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
        "businessStatus": business_status("requested"), "focus": {"reference": f"ServiceRequest/{down_request['id']}"},
        "for": task.get("for"), "partOf": [{"reference": f"Task/{stored.resource_id}"}],
        "basedOn": [{"reference": f"ServiceRequest/{request['id']}"}], "authoredOn": now,
        "requester": hospital, "owner": community, "input": [
            {"type": {"text": "上转结果"}, "valueReference": ref} for ref in outcome],
    }
    return down_request, down_task


def _create(session: Session, principal: Principal, resources: list[dict[str, Any]]) -> None:
    """Written by the server on the actor's behalf (audited as theirs), sent as the actor's organization."""
    writes = [store.Write(r["resourceType"], r["id"], "POST", r, None, org=principal.organization) for r in resources]
    store.apply(session, writes, authorized=True)


RULE = WriteRule(frozenset({"Task"}), check=check, after=after)

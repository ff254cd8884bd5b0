"""Draft referrals from the national rules (基本公卫 高血压/2型糖尿病患者健康管理服务规范, DOMAIN.md §6).

A follow-up with a danger sign (SBP ≥ 180 or DBP ≥ 110; fasting glucose ≥ 16.7 or ≤ 3.9 mmol/L), or the second
uncontrolled follow-up in a row, gets an upward referral in `draft` for the family doctor to confirm: they name
the hospital (Task.owner) and send it (status requested), or cancel it. Qiao never sends one on its own.

Drafted in the transaction that records the follow-up, at most one per follow-up (its ids derive from the
Encounter's, so a retried or re-sent follow-up drafts nothing twice), and none while the resident's record has a
referral open. A correction that takes the reason away cancels a draft nobody has acted on yet.
"""

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from app.auth.relations import reference_id
from app.cdc.followups import Reading
from app.cdc.indicators import Rules, age_on, controlled, has_value
from app.cdc.tables import indicator_followup
from app.config import get_settings
from app.logging import fields
from app.referrals import workflow
from app.referrals.stages import business_status
from app.store import dates
from app.store import repository as store
from app.store.tables import resource, search_reference, search_token

log = logging.getLogger("qiao.referrals")
REASON_SYSTEM = "urn:qiao:referral-trigger"
DANGER_SIGN, UNCONTROLLED_TWICE = "danger-sign", "uncontrolled-twice"
OPEN = ("draft", "requested", "received", "accepted", "in-progress", "on-hold")
DIAGNOSIS = {"hypertension": ("I10", "高血压"), "t2dm": ("E11", "2型糖尿病")}
WITHDRAWN = "随访记录已更正，不再符合转诊条件"
_IDS = uuid.UUID("0c5f7e1a-3b8d-4f62-9e41-7d2a6b0c9f35")  # namespace of draft ids


@dataclass(frozen=True)
class Finding:
    kind: str
    display: str
    priority: str  # Task/ServiceRequest.priority: a danger sign is an emergency referral (紧急转诊)


def draft_ids(encounter_id: str) -> tuple[str, str]:
    """The draft's ServiceRequest and Task ids for a follow-up."""
    return (str(uuid.uuid5(_IDS, f"request/{encounter_id}")), str(uuid.uuid5(_IDS, f"task/{encounter_id}")))


def danger_signs(reading: Reading) -> list[str]:
    """The danger signs among a follow-up's readings (both programmes' forms measure blood pressure)."""
    signs = []
    if reading.systolic is not None and reading.systolic >= 180:
        signs.append(f"收缩压 {reading.systolic:g} mmHg ≥ 180")
    if reading.diastolic is not None and reading.diastolic >= 110:
        signs.append(f"舒张压 {reading.diastolic:g} mmHg ≥ 110")
    if reading.glucose is not None and reading.glucose >= 16.7:
        signs.append(f"血糖 {reading.glucose:g} mmol/L ≥ 16.7")
    if reading.glucose is not None and reading.glucose <= 3.9:
        signs.append(f"血糖 {reading.glucose:g} mmol/L ≤ 3.9")
    return signs


def review(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Draft (or withdraw) the referral each of these follow-ups calls for: rows of `indicator_followup`, just written."""
    settings = get_settings()
    if settings.referral_draft_days <= 0:
        return
    since = dates.micros(dates.now() - timedelta(days=settings.referral_draft_days))
    no_reason = []
    for row in rows:
        if row["patient_id"] is None:
            continue
        finding = _finding(session, row) if row["at"] >= since else None
        if finding is None:
            no_reason.append(row["encounter_id"])
        else:
            _draft(session, row, finding)
    _withdraw(session, no_reason)


def _finding(session: Session, row: dict[str, Any]) -> Finding | None:
    reading = Reading(row["systolic"], row["diastolic"], row["glucose"])
    signs = danger_signs(reading)
    if signs:
        return Finding(DANGER_SIGN, f"危急情况：{'；'.join(signs)}", "stat")
    if not _uncontrolled(session, row):
        return None
    f = indicator_followup.c
    previous = session.execute(
        select(f.at, f.systolic, f.diastolic, f.glucose, f.patient_id, f.programme)
        .where(f.patient_id == row["patient_id"], f.programme == row["programme"], f.has_reading.is_(True), f.at < row["at"])
        .order_by(f.at.desc()).limit(1)).mappings().first()
    if previous is None or not _uncontrolled(session, previous):
        return None
    zone = get_settings().zone
    days = "、".join(f"{dates.from_micros(at).astimezone(zone):%Y-%m-%d}" for at in (previous["at"], row["at"]))
    return Finding(UNCONTROLLED_TWICE, f"连续两次控制不满意（{days}）", "routine")


def _uncontrolled(session: Session, row: Any) -> bool:
    """Not 达标 by the indicators' rule (so the control rate and the drafts agree); no reading is no finding."""
    programme, reading = row["programme"], Reading(row["systolic"], row["diastolic"], row["glucose"])
    if not has_value(programme, reading):
        return False
    rules = Rules.configured()
    age = None
    if programme == "hypertension" and rules.elderly_bp and reading.systolic is not None and 140 <= reading.systolic < 150:
        age = _age(session, row["patient_id"], dates.from_micros(row["at"]).astimezone(get_settings().zone).date())
    return not controlled(programme, reading, age, rules)


def _age(session: Session, patient_id: str, day: date) -> int | None:
    birth = (store.content(session, "Patient", patient_id) or {}).get("birthDate")
    try:
        return age_on(date.fromisoformat(birth), day) if isinstance(birth, str) and len(birth) == 10 else None
    except ValueError:
        return None


def _draft(session: Session, row: dict[str, Any], finding: Finding) -> None:
    encounter_id, patient_id = row["encounter_id"], row["patient_id"]
    request_id, task_id = draft_ids(encounter_id)
    if store.current(session, "Task", task_id) is not None or _has_open_referral(session, patient_id):
        return
    encounter = store.current(session, "Encounter", encounter_id)
    content = store.content(session, "Encounter", encounter_id) or {}
    organization = reference_id(content.get("serviceProvider"), "Organization") or (encounter.org if encounter else None)
    if organization is None:
        log.warning("referral.draft_without_organization", extra=fields(encounter=encounter_id, finding=finding.kind))
        return
    code, name = DIAGNOSIS[row["programme"]]
    now = dates.instant(dates.now())
    community = {"reference": f"Organization/{organization}"}
    subject = {"reference": f"Patient/{patient_id}"}
    reason = {"coding": [{"system": REASON_SYSTEM, "code": finding.kind, "display": finding.display}], "text": finding.display}
    follow_up = {"reference": f"Encounter/{encounter_id}"}
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest", "id": request_id, "status": "draft", "intent": "order", "priority": finding.priority,
        "category": [{"coding": [workflow.REFERRAL_CATEGORY,
                                 {"system": workflow.DIRECTION_SYSTEM, "code": workflow.UPWARD, "display": "上转"}]}],
        "code": {"text": f"{name}上转"}, "subject": subject, "authoredOn": now, "requester": community,
        "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code, "display": name}]}, reason],
        "reasonReference": [follow_up],
    }
    task: dict[str, Any] = {
        "resourceType": "Task", "id": task_id, "status": "draft", "intent": "order", "priority": finding.priority,
        "businessStatus": business_status("draft"),
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "description": f"{finding.display}：建议转诊到上级医院，请家庭医生确认接收医院（Task.owner）后发出",
        "focus": {"reference": f"ServiceRequest/{request_id}"}, "for": subject, "authoredOn": now, "lastModified": now,
        "requester": community, "reasonCode": reason, "reasonReference": follow_up,
    }
    store.apply(session, [store.Write("ServiceRequest", request_id, "POST", request, None, org=organization),
                          store.Write("Task", task_id, "POST", task, None, org=organization)], authorized=True)


def _has_open_referral(session: Session, patient_id: str) -> bool:
    """Whether a referral Task (one whose focus is a ServiceRequest) for this record is open, drafts included."""
    patient, focus, status = search_reference.alias(), search_reference.alias(), search_token.alias()
    found = session.execute(
        select(resource.c.pk)
        .join(patient, and_(patient.c.resource_pk == resource.c.pk, patient.c.param == "patient"))
        .join(focus, and_(focus.c.resource_pk == resource.c.pk, focus.c.param == "focus"))
        .join(status, and_(status.c.resource_pk == resource.c.pk, status.c.param == "status"))
        .where(patient.c.res_type == "Task", patient.c.target_type == "Patient", patient.c.target_id == patient_id,
               focus.c.target_type == "ServiceRequest", status.c.code.in_(OPEN), resource.c.deleted.is_(False))
        .limit(1)).first()
    return found is not None


def _withdraw(session: Session, encounter_ids: list[str]) -> None:
    """Cancel these follow-ups' drafts that nobody has acted on (a sent referral is the family doctor's to cancel).
    One lookup for the lot: most follow-ups never had a draft, and a load of them should not pay a query each."""
    found = store.current_many(session, "Task", [draft_ids(e)[1] for e in encounter_ids], lock=True)
    writes = []
    for task_id, current in found.items():
        task = store.content(session, "Task", task_id) if not current.deleted else None
        if task is None or task.get("status") != "draft":
            continue
        task |= {"status": "cancelled", "businessStatus": business_status("cancelled"), "statusReason": {"text": WITHDRAWN},
                 "lastModified": dates.instant(dates.now())}
        workflow.server_move(session, task_id, "draft", "cancelled")
        writes.append(store.Write("Task", task_id, "PUT", task, current))
    store.apply(session, writes, authorized=True)

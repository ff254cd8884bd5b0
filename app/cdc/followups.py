"""Public-health follow-ups as the indicators count them: the data contract, and the `indicator_followup` table
kept with every write of a follow-up Encounter or of a reading pointing to one.

The contract (README, "Quality indicators"): a follow-up is an Encounter whose type is
`urn:qiao:public-health-service|hypertension-followup` (or `|t2dm-followup`), dated by its period's start, face to
face when its class is AMB (门诊) or HH (家庭), by phone (VR) otherwise; its readings are Observations pointing to it
by `encounter`: the blood-pressure panel 85354-9 (systolic 8480-6, diastolic 8462-4) and fasting glucose 14771-0.
Planned, cancelled or entered-in-error Encounters and Observations are none.
"""

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson
from sqlalchemy import delete, select, tuple_
from sqlalchemy.orm import Session

from app.auth.principal import Principal
from app.auth.relations import reference_id
from app.cdc.tables import indicator_followup
from app.config import get_settings
from app.db import bulk_insert, lock_keys
from app.store import dates
from app.store import repository as store
from app.store.rules import WriteRule
from app.store.tables import resource, resource_version, search_reference, search_token

FOLLOWUP_SYSTEM = "urn:qiao:public-health-service"
FOLLOWUP_CODE = {"hypertension": "hypertension-followup", "t2dm": "t2dm-followup"}
PROGRAMME_OF = {code: programme for programme, code in FOLLOWUP_CODE.items()}
FACE_TO_FACE = frozenset({"AMB", "HH"})
LOINC = "http://loinc.org"
BLOOD_PRESSURE, SYSTOLIC, DIASTOLIC, FASTING_GLUCOSE = "85354-9", "8480-6", "8462-4", "14771-0"
READING_CODES = {"hypertension": BLOOD_PRESSURE, "t2dm": FASTING_GLUCOSE}
NOT_HELD = frozenset({"planned", "cancelled", "entered-in-error"})


class Reading(NamedTuple):
    """A follow-up's values (a tuple: hundreds of thousands are made per evaluation)."""

    systolic: float | None = None
    diastolic: float | None = None
    glucose: float | None = None  # mmol/L


def programme_of(encounter: dict[str, Any]) -> str | None:
    """The programme whose follow-up this Encounter is, if it is one."""
    for concept in encounter.get("type") or []:
        for coding in concept.get("coding") or []:
            if coding.get("system") == FOLLOWUP_SYSTEM and coding.get("code") in PROGRAMME_OF:
                return PROGRAMME_OF[coding["code"]]
    return None


def row(encounter: dict[str, Any], patient_id: str | None, observations: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The follow-up's row from the Encounter and the Observations pointing to it (in the order they were stored:
    of two readings at one follow-up, the later-stored value wins); None when the Encounter is no follow-up held."""
    programme = programme_of(encounter)
    at = dates.start_of((encounter.get("period") or {}).get("start"), get_settings().zone)
    if programme is None or at is None or encounter.get("status") in NOT_HELD:
        return None
    held = [o for o in observations if o.get("status") not in NOT_HELD]
    readings = [o for o in held if READING_CODES[programme] in _loinc(o.get("code"))]
    merged = Reading()
    for observation in held:  # a diabetes follow-up's blood pressure too: it can be a danger sign
        merged = _merge(merged, reading(observation))
    return {"encounter_id": encounter["id"], "patient_id": patient_id, "programme": programme, "at": dates.micros(at),
            "face_to_face": (encounter.get("class") or {}).get("code") in FACE_TO_FACE, "has_reading": bool(readings),
            "systolic": merged.systolic, "diastolic": merged.diastolic, "glucose": merged.glucose}


def reading(observation: dict[str, Any]) -> Reading:
    """The values of a blood-pressure panel (its components) or a fasting glucose (mmol/L; mg/dL converted)."""
    systolic = diastolic = glucose = None
    for component in observation.get("component") or []:
        codes = _loinc(component.get("code"))
        value = _value(component.get("valueQuantity"))
        if SYSTOLIC in codes:
            systolic = value
        elif DIASTOLIC in codes:
            diastolic = value
    if FASTING_GLUCOSE in _loinc(observation.get("code")):
        quantity = observation.get("valueQuantity") or {}
        glucose = _value(quantity)
        if glucose is not None and str(quantity.get("code") or quantity.get("unit") or "").lower() == "mg/dl":
            glucose = round(glucose / 18.0, 2)
    return Reading(systolic, diastolic, glucose)


def _loinc(concept: Any) -> set[str]:
    return {c.get("code") for c in (concept or {}).get("coding") or [] if c.get("system") == LOINC}


def _value(quantity: Any) -> float | None:
    value = (quantity or {}).get("value")
    return float(value) if isinstance(value, int | float) else None


def _merge(first: Reading, second: Reading) -> Reading:
    return Reading(*(b if b is not None else a for a, b in zip(first, second, strict=True)))


# --- keeping the table current ------------------------------------------------------------------------------------


def refresh(session: Session, encounter_ids: Iterable[str]) -> list[dict[str, Any]]:
    """Rewrite the rows of these Encounters from what is stored now, and return them. Each Encounter's
    key is locked first, so that an Encounter and a reading of it written by two transactions at once are counted
    together by the second."""
    ids = sorted(set(encounter_ids))
    if not ids:
        return []
    lock_keys(session, [f"followup:{i}" for i in ids])
    encounters = session.execute(
        select(resource.c.pk, resource.c.res_id, resource.c.patient, resource_version.c.content)
        .join(resource_version, store.CURRENT_VERSION)
        .where(resource.c.res_type == "Encounter", resource.c.res_id.in_(ids))).all()
    session.execute(delete(indicator_followup).where(indicator_followup.c.encounter_pk.in_([e.pk for e in encounters])))
    held: dict[str, tuple[int, str | None, dict[str, Any]]] = {}
    for pk, res_id, patient_id, text in encounters:
        content = orjson.loads(text) if text is not None else None
        if content is not None and programme_of(content) is not None:
            held[res_id] = (pk, patient_id, content)
    if not held:
        return []
    observations: dict[str, list[dict[str, Any]]] = {}
    for text in session.scalars(
            select(resource_version.c.content)
            .join(resource, store.CURRENT_VERSION)
            .join(search_reference, search_reference.c.resource_pk == resource.c.pk)
            .where(search_reference.c.target_id.in_(list(held)), search_reference.c.target_type == "Encounter",
                   search_reference.c.param == "encounter", search_reference.c.res_type == "Observation",
                   resource.c.deleted.is_(False))
            .order_by(resource.c.pk)):
        content = orjson.loads(text)
        encounter_id = reference_id(content.get("encounter"), "Encounter")
        if encounter_id:
            observations.setdefault(encounter_id, []).append(content)
    rows = []
    for res_id, (pk, patient_id, content) in held.items():
        found = row(content, patient_id, observations.get(res_id, []))
        if found is not None:
            rows.append(found | {"encounter_pk": pk})
    bulk_insert(session, indicator_followup, rows)
    return rows


def after(session: Session, written: Sequence[store.Stored], _principal: Principal) -> None:
    """The follow-ups these writes may have changed: Encounters written, and those a reading points to now or
    pointed to before it was changed or deleted."""
    encounters = {s.resource_id for s in written if s.resource_type == "Encounter"}
    changed: list[store.Stored] = []
    for stored in written:
        if stored.resource_type != "Observation":
            continue
        if stored.content is not None:
            encounters |= _reading_of(stored.parsed() or {})
        if not stored.created:
            changed.append(stored)
    if changed:
        for text in session.scalars(select(resource_version.c.content).where(
                tuple_(resource_version.c.resource_pk, resource_version.c.version_id).in_(
                    [(s.pk, s.version_id - 1) for s in changed if s.version_id > 1]))):
            if text is not None:
                encounters |= _reading_of(orjson.loads(text))
    from app.referrals import drafts  # imported late: drafts reads this module

    drafts.review(session, refresh(session, encounters))


def _reading_of(observation: dict[str, Any]) -> set[str]:
    """The Encounter this Observation is a reading of (a follow-up or not: that is the Encounter's to say)."""
    encounter_id = reference_id(observation.get("encounter"), "Encounter")
    if encounter_id and _loinc(observation.get("code")) & set(READING_CODES.values()):
        return {encounter_id}
    return set()


RULE = WriteRule(frozenset({"Encounter", "Observation"}), after=after)


def rebuild(batch_size: int = 1_000) -> int:
    """Write every follow-up's row again (data loaded before the table existed, or after a change of the contract):
    batches of follow-up Encounters in storage order, each its own transaction. How many follow-ups there are."""
    from app import db

    counted = 0
    after_pk = 0
    while True:
        with db.transaction() as session:
            batch = session.execute(
                select(resource.c.pk, resource.c.res_id).join(search_token, search_token.c.resource_pk == resource.c.pk)
                .where(search_token.c.res_type == "Encounter", search_token.c.param == "type",
                       search_token.c.system == FOLLOWUP_SYSTEM, search_token.c.code.in_(list(PROGRAMME_OF)),
                       resource.c.pk > after_pk)
                .order_by(resource.c.pk).limit(batch_size)).all()
            if not batch:
                return counted
            counted += len(refresh(session, [res_id for _, res_id in batch]))
        after_pk = batch[-1].pk

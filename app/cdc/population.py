"""The managed population of a registry in a period, and what its public-health follow-ups say: the data the
disease indicators count, read from the store's search index in a few set-wise queries (no resource is parsed but
the registry entries and the readings that decide control).

The follow-up data contract (README, "Quality indicators"): a follow-up is an Encounter whose type is
`urn:qiao:public-health-service|hypertension-followup` (or `|t2dm-followup`), dated by its period's start, face to
face when its class is AMB (门诊) or HH (家庭), by phone (VR) otherwise; its readings are Observations pointing to it
by `encounter`: the blood-pressure panel 85354-9 (systolic 8480-6, diastolic 8462-4) and fasting glucose 14771-0.
Follow-ups count per resident: those of every record the master patient index links to the master.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import policy
from app.auth.principal import Principal
from app.cdc import registries
from app.cdc.registries import Registry
from app.config import get_settings
from app.store import dates
from app.store import repository as store
from app.store.query import Sql
from app.store.tables import resource, resource_version

FOLLOWUP_SYSTEM = "urn:qiao:public-health-service"
FOLLOWUP_CODE = {"hypertension": "hypertension-followup", "t2dm": "t2dm-followup"}
FACE_TO_FACE = frozenset({"AMB", "HH"})
LOINC = "http://loinc.org"
BLOOD_PRESSURE, SYSTOLIC, DIASTOLIC, FASTING_GLUCOSE = "85354-9", "8480-6", "8462-4", "14771-0"
READING_CODES = {"hypertension": BLOOD_PRESSURE, "t2dm": FASTING_GLUCOSE}
NOT_HELD = "('planned', 'cancelled', 'entered-in-error')"  # Encounter and Observation statuses that are no follow-up
NOT_ENROLLED = "('planned', 'waitlist', 'cancelled', 'entered-in-error')"
CHUNK = 5_000


@dataclass(frozen=True)
class Period:
    """[start, end) of the evaluation, from periodStart and periodEnd as whole days in the configured zone."""

    start: datetime
    end: datetime

    @property
    def days(self) -> int:
        return round((self.end - self.start).total_seconds() / 86_400)


@dataclass(frozen=True)
class Reading:
    systolic: float | None = None
    diastolic: float | None = None
    glucose: float | None = None  # mmol/L


@dataclass
class FollowUp:
    encounter_id: str
    at: datetime
    face_to_face: bool
    readings: list[int] = field(default_factory=list)  # the pks of its Observations of the programme's reading
    reading: Reading | None = None  # read for the follow-up that decides control


@dataclass
class Resident:
    master_id: str
    birth_date: date | None
    organization: str | None  # managing at the end of the resident's management within the period
    district: str | None
    followups: list[FollowUp] = field(default_factory=list)


def managed(session: Session, registry: Registry, period: Period, principal: Principal) -> dict[str, Resident]:
    """The registry's members with a span of management overlapping the period (per master resident, so duplicates
    count once), those the principal may see, each with the organization and district it counts under."""
    sql = Sql()
    start, end = sql.param(dates.micros(period.start)), sql.param(dates.micros(period.end))
    where = ["t.res_type = 'EpisodeOfCare'", "t.param = 'type'", f"t.system = {sql.constant(registries.REGISTRY_SYSTEM)}",
             f"t.code = {sql.param(registry.id)}", "r.deleted = FALSE",
             f"EXISTS (SELECT 1 FROM search_date d WHERE d.resource_pk = r.pk AND d.res_type = 'EpisodeOfCare'"
             f" AND d.param = 'date' AND d.low < {end} AND d.high > {start})"]
    visible = policy.visible_sql(sql, principal, "r", ["EpisodeOfCare"])
    if visible:
        where.append(visible)
    rows = session.execute(sql.statement(
        "SELECT r.patient, CAST(v.content AS TEXT), b.low FROM search_token t"
        " JOIN resource r ON r.pk = t.resource_pk"
        " JOIN resource_version v ON v.resource_pk = r.pk AND v.version_id = r.version_id"
        " LEFT JOIN resource p ON p.res_type = 'Patient' AND p.res_id = r.patient"
        " LEFT JOIN search_date b ON b.resource_pk = p.pk AND b.res_type = 'Patient' AND b.param = 'birthdate'"
        f" WHERE {' AND '.join(where)}"), sql.params)
    zone = get_settings().zone
    found: dict[str, Resident] = {}
    for master_id, text, birth in rows:
        entry = orjson.loads(text)
        if not any(_overlaps(span, period) for span in registries.spans(entry)):
            continue  # a gap between two spans of management covers the period
        born = dates.from_micros(birth).astimezone(zone).date() if birth is not None else None
        found[master_id] = Resident(master_id, born, registries.managing_organization(entry), registries.district(entry))
    _place(session, registry, period, found)
    return found


def _overlaps(span: registries.Span, period: Period) -> bool:
    return span[0] < period.end and (span[1] is None or span[1] > period.start)


def _place(session: Session, registry: Registry, period: Period, residents: dict[str, Resident]) -> None:
    """Count a resident under the centre whose enrolment started last among those overlapping the period, and its
    district: a resident who moved counts where they were managed last, not where they are managed today."""
    sql = Sql()
    start, end = sql.param(dates.micros(period.start)), sql.param(dates.micros(period.end))
    rows = session.execute(sql.statement(
        "SELECT COALESCE(m.master_id, r.patient), o.target_id, d.low FROM search_token t"
        " JOIN resource r ON r.pk = t.resource_pk"
        " JOIN search_date d ON d.resource_pk = r.pk AND d.res_type = 'EpisodeOfCare' AND d.param = 'date'"
        " JOIN search_reference o ON o.resource_pk = r.pk AND o.res_type = 'EpisodeOfCare' AND o.param = 'organization'"
        "  AND o.target_type = 'Organization'"
        " LEFT JOIN mpi_record m ON m.patient_id = r.patient"
        f" WHERE t.res_type = 'EpisodeOfCare' AND t.param = 'type' AND t.system = {sql.constant(registries.PROGRAMME_SYSTEM)}"
        f" AND t.code = {sql.param(registry.programme)} AND r.deleted = FALSE AND d.low < {end} AND d.high > {start}"
        " AND NOT EXISTS (SELECT 1 FROM search_token s WHERE s.resource_pk = r.pk AND s.res_type = 'EpisodeOfCare'"
        f"  AND s.param = 'status' AND s.code IN {NOT_ENROLLED})"), sql.params)
    latest: dict[str, tuple[int, str]] = {}
    for master_id, org_id, started in rows:
        if master_id in residents and (master_id not in latest or started > latest[master_id][0]):
            latest[master_id] = (started, org_id)
    found = registries.read_organizations(session, {org for _, org in latest.values()})
    for master_id, (_, org_id) in latest.items():
        resident = residents[master_id]
        if org_id != resident.organization:
            resident.organization = org_id
            resident.district = registries.district_of(found.get(org_id)) or resident.district


def add_followups(session: Session, programme: str, period: Period, residents: dict[str, Resident]) -> None:
    """Each resident's follow-ups in the period, in date order, each with the pks of its readings: one statement,
    a row per follow-up and reading (a follow-up without one: a row with none)."""
    sql = Sql()
    start, end = sql.param(dates.micros(period.start)), sql.param(dates.micros(period.end))
    rows = session.execute(sql.statement(
        "SELECT COALESCE(m.master_id, r.patient), r.res_id, d.low, c.code, readings.pk FROM search_token t"
        " JOIN resource r ON r.pk = t.resource_pk"
        " JOIN search_date d ON d.resource_pk = r.pk AND d.res_type = 'Encounter' AND d.param = 'date'"
        f"  AND d.low >= {start} AND d.low < {end}"
        " LEFT JOIN search_token c ON c.resource_pk = r.pk AND c.res_type = 'Encounter' AND c.param = 'class'"
        " LEFT JOIN mpi_record m ON m.patient_id = r.patient"
        " LEFT JOIN (SELECT x.target_id, o.pk FROM search_reference x JOIN resource o ON o.pk = x.resource_pk"
        "  JOIN search_token k ON k.resource_pk = o.pk AND k.res_type = 'Observation' AND k.param = 'code'"
        f"   AND k.system = '{LOINC}' AND k.code = {sql.param(READING_CODES[programme])}"
        "  WHERE x.res_type = 'Observation' AND x.param = 'encounter' AND x.target_type = 'Encounter' AND o.deleted = FALSE"
        "  AND NOT EXISTS (SELECT 1 FROM search_token s WHERE s.resource_pk = o.pk AND s.res_type = 'Observation'"
        f"   AND s.param = 'status' AND s.code IN {NOT_HELD})) readings ON readings.target_id = r.res_id"
        f" WHERE t.res_type = 'Encounter' AND t.param = 'type' AND t.system = {sql.constant(FOLLOWUP_SYSTEM)}"
        f" AND t.code = {sql.param(FOLLOWUP_CODE[programme])} AND r.deleted = FALSE"
        " AND NOT EXISTS (SELECT 1 FROM search_token s WHERE s.resource_pk = r.pk AND s.res_type = 'Encounter'"
        f"  AND s.param = 'status' AND s.code IN {NOT_HELD})"), sql.params)
    encounters: dict[str, FollowUp] = {}
    for master_id, encounter_id, low, class_code, reading_pk in rows:
        resident = residents.get(master_id)
        if resident is None:
            continue
        followup = encounters.get(encounter_id)
        if followup is None:
            followup = encounters[encounter_id] = FollowUp(encounter_id, dates.from_micros(low), class_code in FACE_TO_FACE)
            resident.followups.append(followup)
        if reading_pk is not None and reading_pk not in followup.readings:
            followup.readings.append(reading_pk)
    for resident in residents.values():
        resident.followups.sort(key=lambda f: (f.at, f.encounter_id))


def read_readings(session: Session, followups: Iterable[FollowUp]) -> None:
    """Read the readings of these follow-ups (those that decide control) into `FollowUp.reading`."""
    wanted = {pk: f for f in followups for pk in f.readings}
    contents: dict[int, dict[str, Any]] = {}
    for chunk in _chunks(sorted(wanted)):
        rows = session.execute(select(resource.c.pk, resource_version.c.content).join(resource_version, store.CURRENT_VERSION)
                               .where(resource.c.pk.in_(chunk)))
        contents |= {pk: orjson.loads(text) for pk, text in rows}
    for pk in sorted(contents):
        followup = wanted[pk]
        followup.reading = _merge(followup.reading, reading(contents[pk]))


def reading(observation: dict[str, Any]) -> Reading:
    """The values of a blood-pressure panel (its components) or a fasting glucose (mmol/L; mg/dL converted)."""
    systolic = diastolic = glucose = None
    for component in observation.get("component") or []:
        codes = {c.get("code") for c in (component.get("code") or {}).get("coding") or [] if c.get("system") == LOINC}
        value = _value(component.get("valueQuantity"))
        if SYSTOLIC in codes:
            systolic = value
        elif DIASTOLIC in codes:
            diastolic = value
    codes = {c.get("code") for c in (observation.get("code") or {}).get("coding") or [] if c.get("system") == LOINC}
    if FASTING_GLUCOSE in codes:
        quantity = observation.get("valueQuantity") or {}
        glucose = _value(quantity)
        if glucose is not None and str(quantity.get("code") or quantity.get("unit") or "").lower() == "mg/dl":
            glucose = round(glucose / 18.0, 2)
    return Reading(systolic, diastolic, glucose)


def _value(quantity: Any) -> float | None:
    value = (quantity or {}).get("value")
    return float(value) if isinstance(value, int | float) else None


def _merge(first: Reading | None, second: Reading) -> Reading:
    """Two readings at one follow-up (a panel and a separate glucose, or a repeat): the later-stored value wins."""
    if first is None:
        return second
    return Reading(*(b if b is not None else a for a, b in zip(
        (first.systolic, first.diastolic, first.glucose), (second.systolic, second.diastolic, second.glucose), strict=True)))


def _chunks(items: list[Any]) -> Iterable[list[Any]]:
    for at in range(0, len(items), CHUNK):
        yield items[at:at + CHUNK]

"""The managed population of a registry in a period, and its public-health follow-ups: the data the disease
indicators count, read from the indicators' tables (app/cdc/tables.py, kept in the write) in two range scans, no
resource parsed. Follow-ups count per resident: those of every record the master patient index links to the master.
"""

from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import policy
from app.auth.principal import Principal
from app.cdc import registries
from app.cdc.followups import Reading
from app.cdc.registries import Registry
from app.cdc.tables import indicator_followup
from app.mpi.tables import mpi_record
from app.store import dates
from app.store.query import Sql


@dataclass(frozen=True)
class Period:
    """[start, end) of the evaluation, from periodStart and periodEnd as whole days in the configured zone."""

    start: datetime
    end: datetime

    @property
    def days(self) -> int:
        return round((self.end - self.start).total_seconds() / 86_400)


@dataclass(slots=True)
class FollowUp:
    encounter_id: str
    at: int  # microseconds since the epoch (dates.from_micros): hundreds of thousands are made per evaluation
    face_to_face: bool
    reading: Reading | None = None  # None: no reading of the programme's code at this follow-up


@dataclass
class Resident:
    master_id: str
    birth_date: date | None
    organization: str | None  # managing at the end of the resident's management within the period
    district: str | None
    followups: list[FollowUp] = field(default_factory=list)


def managed(session: Session, registry: Registry, period: Period, principal: Principal) -> dict[str, Resident]:
    """The registry's members with a span of management overlapping the period (per master resident, so duplicates
    count once), those the principal may see. Each counts under the centre whose enrolment started last among those
    overlapping the period, and its district (else the home district): a resident who moved counts where they were
    managed last, not where they are managed today."""
    sql = Sql()
    where = [f"s.registry = {sql.param(registry.id)}", f"s.since < {sql.param(dates.micros(period.end))}",
             f"(s.until IS NULL OR s.until > {sql.param(dates.micros(period.start))})"]
    entries = ""
    visible = policy.visible_sql(sql, principal, "r", ["EpisodeOfCare"])
    if visible:  # the policy's rule on the resident's registry entry, as on a search of entries
        entries = " JOIN resource r ON r.res_type = 'EpisodeOfCare' AND r.res_id = s.entry_id"
        where.append(visible)
    rows = session.execute(sql.statement(
        f"SELECT s.master_id, s.since, s.organization, s.home_district, s.birth_date FROM registry_span s{entries}"
        f" WHERE {' AND '.join(where)}"), sql.params).all()
    latest: dict[str, tuple[int, str, str | None, str | None]] = {}
    for master_id, since, org_id, home, born in rows:
        if master_id not in latest or (since, org_id or "") > latest[master_id][:2]:
            latest[master_id] = (since, org_id or "", home, born)
    found = registries.read_organizations(session, {org for _, org, _, _ in latest.values() if org})
    districts = {org_id: registries.district_of(content) for org_id, content in found.items()}
    return {master_id: Resident(master_id, date.fromisoformat(born) if born else None, org or None, districts.get(org) or home)
            for master_id, (_, org, home, born) in latest.items()}


def add_followups(session: Session, programme: str, period: Period, residents: dict[str, Resident]) -> None:
    """Each resident's follow-ups in the period, with their readings."""
    f = indicator_followup
    rows = session.execute(
        select(func.coalesce(mpi_record.c.master_id, f.c.patient_id), f.c.encounter_id, f.c.at, f.c.face_to_face,
               f.c.has_reading, f.c.systolic, f.c.diastolic, f.c.glucose)
        .select_from(f.outerjoin(mpi_record, mpi_record.c.patient_id == f.c.patient_id))
        .where(f.c.programme == programme, f.c.at >= dates.micros(period.start), f.c.at < dates.micros(period.end))).all()
    for master_id, encounter_id, at, face_to_face, has_reading, systolic, diastolic, glucose in rows:
        resident = residents.get(master_id)
        if resident is not None:
            reading = Reading(systolic, diastolic, glucose) if has_reading else None
            resident.followups.append(FollowUp(encounter_id, at, face_to_face, reading))

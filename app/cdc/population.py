"""The managed population of a registry in a period, and its public-health follow-ups: the data the disease
indicators count, read from the indicators' tables (app/cdc/tables.py, kept in the write) in two range scans, no
resource parsed. Follow-ups count per resident: those of every record the master patient index links to the master.
"""

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

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


@dataclass(frozen=True, slots=True)
class FollowUp:
    encounter_id: str
    at: int  # microseconds since the epoch (dates.from_micros)
    reading: Reading | None  # None: no reading of the programme's code at this follow-up


@dataclass
class Resident:
    master_id: str
    birth_date: date | None
    organization: str | None  # managing at the end of the resident's management within the period
    district: str | None


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


def face_to_face_counts(session: Session, programme: str, period: Period) -> dict[str, int]:
    """Per master resident, the face-to-face follow-ups in the period (of every record linked to the master)."""
    f = indicator_followup
    master = _master()
    rows = session.execute(select(master, func.count()).select_from(_followups_with_masters())
                           .where(*_within(programme, period), f.c.face_to_face).group_by(master))
    return {master_id: count for master_id, count in rows}


def latest_followups(session: Session, programme: str, period: Period, *, with_reading: bool) -> dict[str, FollowUp]:
    """Per master resident, the latest follow-up in the period (the latest with a reading, when `with_reading`):
    the one whose reading decides control. Ties on time go to the greater Encounter id, so that the choice is
    the same on every evaluation."""
    f = indicator_followup
    master = _master()
    conditions = [*_within(programme, period), *([f.c.has_reading] if with_reading else [])]
    ranked = (select(master.label("master_id"), f.c.encounter_id, f.c.at, f.c.has_reading, f.c.systolic, f.c.diastolic, f.c.glucose,
                     func.row_number().over(partition_by=master, order_by=(f.c.at.desc(), f.c.encounter_id.desc())).label("rank"))
              .select_from(_followups_with_masters()).where(*conditions).subquery())
    rows = session.execute(select(ranked.c.master_id, ranked.c.encounter_id, ranked.c.at, ranked.c.has_reading, ranked.c.systolic,
                                  ranked.c.diastolic, ranked.c.glucose).where(ranked.c.rank == 1))
    return {master_id: FollowUp(encounter_id, at, Reading(systolic, diastolic, glucose) if has_reading else None)
            for master_id, encounter_id, at, has_reading, systolic, diastolic, glucose in rows}


def _master() -> Any:
    """A follow-up's master resident: its record's master, else the record itself (not yet indexed)."""
    return func.coalesce(mpi_record.c.master_id, indicator_followup.c.patient_id)


def _followups_with_masters() -> Any:
    return indicator_followup.outerjoin(mpi_record, mpi_record.c.patient_id == indicator_followup.c.patient_id)


def _within(programme: str, period: Period) -> list[Any]:
    f = indicator_followup
    return [f.c.programme == programme, f.c.at >= dates.micros(period.start), f.c.at < dates.micros(period.end)]

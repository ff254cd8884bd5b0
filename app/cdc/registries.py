"""Chronic-disease registries (CONVENTIONS: CDC registries): the managed population of hypertension and type-2
diabetes, per master resident, kept current inside every write that can change it.

A resident is in a registry while one of their records (the master or any source linked to it) has a confirmed
diagnosis of the disease and one of their records is enrolled in its management: an EpisodeOfCare whose type is the
programme (`urn:qiao:care-programme|hypertension` or `|t2dm`). Membership is a registry entry, an EpisodeOfCare Qiao
derives from those records (id `{registry}-{master}`, type `urn:qiao:registry|{registry}`):
- statusHistory: the spans of management, the union of the enrolments' periods, cut at death;
- status: active while a span covers today, planned before the first starts, finished after, cancelled when the
  diagnosis or the enrolments are gone (the resident then counts in no period). Today moves on without a write:
  the clock's registries pass (app/clock.py, `due`) derives the entry again when one of its enrolments starts or
  ends;
- managingOrganization: the enrolment that covers today (latest start), else the last one; `district`: that
  organization's GB/T 2260 county code, else the resident's home address's.
Entries are stored resources: searchable (`EpisodeOfCare?type=urn:qiao:registry|t2dm-registry&district=330106`),
exported, audited, and each change raises the registry topic. The registry Group is composed from them when read.
An entry is rewritten only when what it says changed, so a notification means a change. The indicators' spans of
management (`registry_span`, app/cdc/tables.py) are written with the entries, whenever a resident is refreshed.
"""

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.auth import policy
from app.auth.principal import Principal
from app.auth.relations import reference_id
from app.cdc.tables import registry_span
from app.config import get_settings
from app.db import among, bulk_insert, lock_keys
from app.errors import Forbidden
from app.mpi import golden, index
from app.store import dates, query
from app.store import repository as store
from app.store.rules import WriteRule
from app.store.tables import resource, resource_version, search_reference, search_token

REGISTRY_SYSTEM = "urn:qiao:registry"
PROGRAMME_SYSTEM = "urn:qiao:care-programme"
DISTRICT_URL = "urn:qiao:extension:district"
MANAGING_URL = "urn:qiao:extension:managing-organization"
ENTRY_URL = "urn:qiao:extension:registry-entry"
DIVISION_URL = "http://StructureDefinition.hl7fhir.cn/AdministrativeDivision"
ICD_10 = frozenset({"http://hl7.org/fhir/sid/icd-10", "urn:oid:2.16.156.10011.2.3.3.11"})
NOT_CONFIRMED = frozenset({"unconfirmed", "provisional", "differential", "refuted", "entered-in-error"})
NOT_ACTIVE = frozenset({"inactive", "remission", "resolved"})
ENROLLED = frozenset({"active", "onhold", "finished"})  # planned, waitlist, cancelled: never managed


@dataclass(frozen=True)
class Registry:
    id: str
    title: str
    diagnoses: re.Pattern[str]  # ICD-10 codes that qualify
    programme: str  # code of the enrolment's EpisodeOfCare.type in PROGRAMME_SYSTEM
    programme_title: str


REGISTRIES = {
    r.id: r for r in (
        Registry("hypertension-registry", "高血压患者登记 (hypertension registry)", re.compile(r"^I1[0-5]"),
                 "hypertension", "高血压患者健康管理"),
        Registry("t2dm-registry", "2型糖尿病患者登记 (type 2 diabetes registry)", re.compile(r"^E11"),
                 "t2dm", "2型糖尿病患者健康管理"),
    )
}


def entry_id(registry: Registry, master_id: str) -> str:
    return f"{registry.id}-{master_id}"


def is_entry(content: dict[str, Any]) -> bool:
    return content.get("resourceType") == "EpisodeOfCare" and any(
        c.get("system") == REGISTRY_SYSTEM for t in content.get("type") or [] for c in t.get("coding") or [])


def qualifies(registry: Registry, condition: dict[str, Any]) -> bool:
    """A confirmed, current diagnosis of the registry's disease (no verificationStatus: as recorded, confirmed)."""
    verification = _codes(condition.get("verificationStatus"))
    clinical = _codes(condition.get("clinicalStatus"))
    if verification & NOT_CONFIRMED or clinical & NOT_ACTIVE:
        return False
    return any(c.get("system") in ICD_10 and registry.diagnoses.match(str(c.get("code", "")).strip().upper())
               for c in (condition.get("code") or {}).get("coding") or [])


def _codes(concept: Any) -> set[str]:
    return {str(c.get("code")) for c in (concept or {}).get("coding") or []}


def enrols(registry: Registry, episode: dict[str, Any]) -> bool:
    return episode.get("status") in ENROLLED and any(
        c.get("system") == PROGRAMME_SYSTEM and c.get("code") == registry.programme
        for t in episode.get("type") or [] for c in t.get("coding") or [])


# --- deriving an entry ------------------------------------------------------------------------------------------


@dataclass
class Person:
    """What one master resident's records say that registries depend on."""

    master_id: str
    patients: list[dict[str, Any]]
    conditions: list[dict[str, Any]]
    episodes: list[dict[str, Any]]
    entries: dict[str, dict[str, Any]]  # its registry entries as they stand, by id


Span = tuple[datetime, datetime | None]  # [start, end); None: open


def entry(registry: Registry, person: Person, organizations: dict[str, dict[str, Any]], now: datetime) -> dict[str, Any]:
    """The registry entry these records make (cancelled: not a member in any period)."""
    diagnoses = sorted(c["id"] for c in person.conditions if qualifies(registry, c))
    enrolments = [e for e in person.episodes if enrols(registry, e)]
    spans = _spans(enrolments, _death(person.patients)) if diagnoses else []
    if not spans:
        return {"resourceType": "EpisodeOfCare", "id": entry_id(registry, person.master_id), "status": "cancelled",
                "type": [_type(registry)], "patient": {"reference": f"Patient/{person.master_id}"}}
    current = [e for e in enrolments if _covers(_span_of(e), now)]
    if current:  # a resident who moved may still be open at the old centre: the newest enrolment manages
        managing = max(current, key=lambda e: _span_of(e)[0])
    else:
        managing = max(enrolments, key=lambda e: (_span_of(e)[1] or now, _span_of(e)[0]))
    org_id = reference_id(managing.get("managingOrganization"), "Organization")
    division = district_of(organizations.get(org_id or "")) or _home_district(person.patients)
    active = any(_covers(span, now) for span in spans)
    content: dict[str, Any] = {"resourceType": "EpisodeOfCare", "id": entry_id(registry, person.master_id)}
    if division:
        content["extension"] = [{"url": DISTRICT_URL, "valueCode": division}]
    content |= {
        "status": "active" if active else "planned" if spans[0][0] > now else "finished",
        "statusHistory": [{"status": "active", "period": _period(span)} for span in spans],
        "type": [_type(registry)],
        "diagnosis": [{"condition": {"reference": f"Condition/{c}"}} for c in diagnoses],
        "patient": {"reference": f"Patient/{person.master_id}"},
    }
    if org_id:
        content["managingOrganization"] = {"reference": f"Organization/{org_id}"}
    content["period"] = _period((spans[0][0], None if active else spans[-1][1]))
    return content


def span_rows(registry: Registry, person: Person) -> list[dict[str, Any]]:
    """The resident's rows of `registry_span` for this registry: one per enrolment, cut at death (none without the
    diagnosis), with the centre it names, the home district and the master's birth date."""
    if not any(qualifies(registry, c) for c in person.conditions):
        return []
    death = _death(person.patients)
    master = next((p for p in person.patients if p.get("id") == person.master_id), {})
    born = _instant(master.get("birthDate"))
    common: dict[str, Any] = {"registry": registry.id, "master_id": person.master_id, "entry_id": entry_id(registry, person.master_id),
              "home_district": _home_district(person.patients),
              "birth_date": born.astimezone(get_settings().zone).date().isoformat() if born else None}
    rows = []
    for enrolment in person.episodes:
        if not enrols(registry, enrolment):
            continue
        for since, until in _cut([_span_of(enrolment)], death):
            rows.append(common | {"since": dates.micros(since), "until": dates.micros(until) if until else None,
                                  "organization": reference_id(enrolment.get("managingOrganization"), "Organization")})
    return rows


def _type(registry: Registry) -> dict[str, Any]:
    return {"coding": [{"system": REGISTRY_SYSTEM, "code": registry.id, "display": registry.title}]}


def _spans(enrolments: Sequence[dict[str, Any]], death: datetime | None) -> list[Span]:
    """The union of the enrolments' periods, cut at death, in order."""
    merged: list[Span] = []
    for start, end in _cut(sorted(_span_of(e) for e in enrolments), death):
        if merged and (merged[-1][1] is None or start <= merged[-1][1]):
            last_end = merged[-1][1]
            merged[-1] = (merged[-1][0], None if last_end is None or end is None else max(last_end, end))
        else:
            merged.append((start, end))
    return merged


def _cut(spans: list[Span], death: datetime | None) -> list[Span]:
    if death is None:
        return spans
    return [(start, min(end, death) if end else death) for start, end in spans if start < death]


def _span_of(episode: dict[str, Any]) -> Span:
    """An enrolment's period; without a start, when it was recorded; a finished one without an end, ended then."""
    period = episode.get("period") or {}
    recorded = _instant((episode.get("meta") or {}).get("lastUpdated"))
    start = _instant(period.get("start")) or recorded or dates.now()
    end = _instant(period.get("end"))
    if end is None and episode.get("status") == "finished":
        end = recorded or start
    return start, end


def _covers(span: Span, moment: datetime) -> bool:
    return span[0] <= moment and (span[1] is None or moment < span[1])


def _period(span: Span) -> dict[str, str]:
    """In the configured zone, as the sources state dates (a span from 2025-02-01 reads so)."""
    zone = get_settings().zone
    period = {"start": span[0].astimezone(zone).isoformat(timespec="seconds")}
    if span[1] is not None:
        period["end"] = span[1].astimezone(zone).isoformat(timespec="seconds")
    return period


def _instant(value: Any) -> datetime | None:
    return dates.start_of(value, get_settings().zone)


def _death(patients: Iterable[dict[str, Any]]) -> datetime | None:
    found = [_instant(p.get("deceasedDateTime")) for p in patients]
    known = [moment for moment in found if moment is not None]
    return min(known) if known else None


def district_of(holder: dict[str, Any] | None) -> str | None:
    """The GB/T 2260 county code (6 digits) of the first address carrying an administrative division."""
    for address in (holder or {}).get("address") or []:
        for extension in address.get("extension") or []:
            if extension.get("url") == DIVISION_URL:
                code = str(extension.get("valueCode") or extension.get("valueString") or "")
                if len(code) >= 6 and code[:6].isdigit():
                    return code[:6]
    return None


def _home_district(patients: Sequence[dict[str, Any]]) -> str | None:
    for patient in sorted(patients, key=lambda p: (p.get("meta") or {}).get("lastUpdated") or "", reverse=True):
        found = district_of(patient)
        if found:
            return found
    return None


def spans(entry_: dict[str, Any]) -> list[Span]:
    """An entry's spans of management (its statusHistory)."""
    found = []
    for item in entry_.get("statusHistory") or []:
        period = item.get("period") or {}
        start = _instant(period.get("start"))
        if start is not None:
            found.append((start, _instant(period.get("end"))))
    return found


def managing_organization(entry_: dict[str, Any]) -> str | None:
    return reference_id(entry_.get("managingOrganization"), "Organization")


def district(entry_: dict[str, Any]) -> str | None:
    return next((e.get("valueCode") for e in entry_.get("extension") or [] if e.get("url") == DISTRICT_URL), None)


# --- keeping entries current ------------------------------------------------------------------------------------


def refresh(session: Session, master_ids: Iterable[str]) -> int:
    """Rewrite the registry entries of these masters from their records (those that changed); how many. Each
    master's key is locked first, so that two transactions changing one resident's records derive its entries one
    after the other, the second seeing what the first committed."""
    masters = sorted(set(master_ids))
    if not masters:
        return 0
    lock_keys(session, [f"registry:{m}" for m in masters])
    people = _people(session, masters)
    organizations = read_organizations(session, {
        org for person in people.values() for e in person.episodes if (org := reference_id(e.get("managingOrganization"), "Organization"))})
    now = dates.now()
    changed: dict[str, dict[str, Any]] = {}
    session.execute(delete(registry_span).where(among(session, registry_span.c.master_id, masters)))
    bulk_insert(session, registry_span, [row for person in people.values() for registry in REGISTRIES.values()
                                         for row in span_rows(registry, person)])
    for person in people.values():
        for registry in REGISTRIES.values():
            content = entry(registry, person, organizations, now)
            before = person.entries.get(content["id"])
            if before is None and content["status"] == "cancelled":
                continue  # never a member: no entry
            if before is None or {k: v for k, v in before.items() if k != "meta"} != content:
                changed[content["id"]] = content
    found = store.current_many(session, "EpisodeOfCare", list(changed)) if changed else {}
    store.apply(session, [store.Write("EpisodeOfCare", entry_id_, "PUT" if entry_id_ in found else "POST", content, found.get(entry_id_))
                          for entry_id_, content in changed.items()], authorized=True)
    return len(changed)


def due(session: Session, after: int, until: int) -> list[str]:
    """The masters one of whose enrolments started or ended in (after, until] (microseconds): their entries were
    derived before that moment and may now say the wrong status or managing organization (app/clock.py)."""
    s = registry_span.c
    found: set[str] = set()
    for bound in (s.since, s.until):  # each an index range scan per registry
        found.update(session.scalars(select(s.master_id).where(s.registry.in_(list(REGISTRIES)), bound > after, bound <= until)))
    return sorted(found)


def rebuild(batch_size: int = 500) -> tuple[int, int]:
    """Derive every resident's entries again: for data loaded before registries existed, or after a change of
    these rules. Batches of masters in id order, each its own transaction, so a long run holds no long lock and
    can be stopped and run again. (residents seen, entries written)"""
    from app import db

    seen = written = 0
    after = ""
    while True:
        with db.transaction() as session:
            masters = index.masters_after(session, after, batch_size)
            if not masters:
                return seen, written
            written += refresh(session, masters)
        seen += len(masters)
        after = masters[-1]


def _people(session: Session, masters: list[str]) -> dict[str, Person]:
    """Each master's records: its Patients (master and sources), Conditions, enrolments and registry entries. Only
    masters with a Condition or an EpisodeOfCare (an enrolment, an entry) are read: any other is in no registry
    and has no entry to cancel, and most residents of a district's initial load are such."""
    owner = {m: m for m in masters} | index.sources(session, masters)
    # found by indexed look-ups on ids (the reference index, the type-and-id key), never by `resource.patient` with
    # the resource types, for which PostgreSQL, its statistics lagging during a district's initial load, scanned
    # every Patient
    clinical = session.execute(select(search_reference.c.resource_pk, search_reference.c.target_id).where(
        among(session, search_reference.c.target_id, owner), search_reference.c.target_type == "Patient",
        search_reference.c.param == "patient", search_reference.c.res_type.in_(("Condition", "EpisodeOfCare")))).all()
    people = {m: Person(m, [], [], [], {}) for m in sorted({owner[patient] for _, patient in clinical if patient in owner})}
    if not people:
        return {}
    pks = [pk for pk, _ in clinical]
    pks += session.scalars(select(resource.c.pk).where(
        resource.c.res_type == "Patient", among(session, resource.c.res_id, [p for p, m in owner.items() if m in people])))
    rows = session.execute(
        select(resource.c.res_type, resource.c.patient, resource_version.c.content)
        .join(resource_version, store.CURRENT_VERSION).where(among(session, resource.c.pk, pks), resource.c.deleted.is_(False)))
    for res_type, patient_id, text in rows:
        if owner.get(patient_id) not in people:
            continue
        content = orjson.loads(text)
        person = people[owner[patient_id]]
        if res_type == "Patient":
            person.patients.append(content)
        elif res_type == "Condition":
            person.conditions.append(content)
        elif is_entry(content):
            person.entries[content["id"]] = content
        else:
            person.episodes.append(content)
    return people


def read_organizations(session: Session, ids: set[str]) -> dict[str, dict[str, Any]]:
    """The current content of these Organizations, by id (for their districts)."""
    found: dict[str, dict[str, Any]] = {}
    wanted = sorted(ids)
    for at in range(0, len(wanted), 5_000):
        rows = session.execute(
            select(resource_version.c.res_id, resource_version.c.content).join(resource, store.CURRENT_VERSION)
            .where(resource.c.res_type == "Organization", resource.c.res_id.in_(wanted[at:at + 5_000]), resource.c.deleted.is_(False)))
        found |= {res_id: orjson.loads(text) for res_id, text in rows}
    return found


def managed_by(session: Session, org_ids: Iterable[str]) -> set[str]:
    """The masters whose registry entries name these organizations as managing."""
    rows = session.execute(
        select(resource.c.patient)
        .join(search_reference, search_reference.c.resource_pk == resource.c.pk)
        .join(search_token, search_token.c.resource_pk == resource.c.pk)
        .where(search_reference.c.res_type == "EpisodeOfCare", search_reference.c.param == "organization",
               search_reference.c.target_type == "Organization", search_reference.c.target_id.in_(list(org_ids)),
               search_token.c.res_type == "EpisodeOfCare", search_token.c.param == "type", search_token.c.system == REGISTRY_SYSTEM))
    return {patient for (patient,) in rows if patient}


# --- the write rule ---------------------------------------------------------------------------------------------


def guard(session: Session, write: Any, _principal: Principal) -> None:
    """Entries are the registries' own: no client writes one (the server's writes skip checks)."""
    content = write.content
    if content is not None and content.get("resourceType") == "EpisodeOfCare" and is_entry(content):
        raise Forbidden(f"registry entries (EpisodeOfCare.type {REGISTRY_SYSTEM}) are kept by Qiao from diagnoses and "
                        f"enrolments; write those instead", expression=["EpisodeOfCare.type"])
    if write.resource_type == "EpisodeOfCare" and _entry_name(write.resource_id):
        raise Forbidden(f"EpisodeOfCare/{write.resource_id} is a registry entry kept by Qiao", expression=["EpisodeOfCare"])
    if write.resource_type == "Group" and write.resource_id in REGISTRIES:
        raise Forbidden(f"Group/{write.resource_id} is a registry kept by Qiao", expression=["Group"])


def _entry_name(resource_id: str) -> bool:
    return any(resource_id.startswith(f"{r}-") for r in REGISTRIES)


def after(session: Session, written: Sequence[Any], _principal: Principal) -> None:
    """Which residents the writes may have moved in or out of a registry, and refresh their entries. Source Patients
    are left to the master patient index, whose rewrite of their masters comes here."""
    patients: set[str] = set()
    masters: set[str] = set()
    organizations: set[str] = set()
    for stored in written:
        if stored.resource_type == "Organization":
            organizations.add(stored.resource_id)
        elif stored.resource_type == "Patient":
            content = stored.parsed()
            if content is None or golden.is_master(content):
                masters.add(stored.resource_id)
        elif stored.patient and not (stored.resource_type == "EpisodeOfCare" and _entry_name(stored.resource_id)):
            patients.add(stored.patient)
    masters |= index.masters_of(session, patients)
    if organizations:
        masters |= managed_by(session, organizations)
    refresh(session, masters)


RULE = WriteRule(frozenset({"Condition", "EpisodeOfCare", "Patient", "Organization", "Group"}), check=guard, after=after)


# --- the registry Group -----------------------------------------------------------------------------------------


@dataclass
class Member:
    entry: str  # the entry's id
    patient_id: str
    since: str | None
    organization: str | None
    district: str | None
    last_updated: datetime
    version_id: int


def members(session: Session, registry: Registry, principal: Principal) -> list[Member]:
    """The registry's active members the principal may see (the institution policy, as on any read)."""
    policy.require(principal, "Group", "r")
    sql = query.Sql()
    where = ["t.res_type = 'EpisodeOfCare'", "t.param = 'type'", f"t.system = {sql.constant(REGISTRY_SYSTEM)}",
             f"t.code = {sql.param(registry.id)}", "r.deleted = FALSE"]
    visible = policy.visible_sql(sql, principal, "r", ["EpisodeOfCare"])
    if visible:
        where.append(visible)
    statement = sql.statement(
        "SELECT r.res_id, r.patient, r.last_updated, r.version_id, CAST(v.content AS TEXT) FROM search_token t"
        " JOIN resource r ON r.pk = t.resource_pk"
        " JOIN resource_version v ON v.resource_pk = r.pk AND v.version_id = r.version_id"
        f" WHERE {' AND '.join(where)} ORDER BY r.res_id", (("last_updated", query.TIMESTAMP),))
    found = []
    for res_id, patient_id, last_updated, version_id, text in session.execute(statement, sql.params):
        content = orjson.loads(text)
        if content.get("status") != "active":
            continue
        found.append(Member(res_id, patient_id, (content.get("period") or {}).get("start"), managing_organization(content),
                            district(content), dates.aware(last_updated), version_id))
    return found


def group(session: Session, registry: Registry, principal: Principal) -> store.Stored:
    """The registry as a Group of master residents, each with its managing organization and district. Composed from
    the entries when read (a stored Group would be rewritten whole at every change of any member): its versionId
    counts the changes of its entries, so it moves whenever the membership does."""
    found = members(session, registry, principal)
    changed = max((m.last_updated for m in found), default=dates.now())
    version = sum(m.version_id for m in found) or 1
    content: dict[str, Any] = {
        "resourceType": "Group", "id": registry.id,
        "meta": {"versionId": str(version), "lastUpdated": dates.instant(changed)},
        "identifier": [{"system": REGISTRY_SYSTEM, "value": registry.id}],
        "active": True, "type": "person", "actual": True,
        "code": {"coding": [{"system": PROGRAMME_SYSTEM, "code": registry.programme, "display": registry.programme_title}],
                 "text": registry.title},
        "name": registry.title,
        "quantity": len(found),
    }
    if found:
        content["member"] = [_member(m) for m in found]
    return store.Stored("Group", registry.id, version, changed, False, orjson.dumps(content).decode())


def _member(member: Member) -> dict[str, Any]:
    extension: list[dict[str, Any]] = [{"url": ENTRY_URL, "valueReference": {"reference": f"EpisodeOfCare/{member.entry}"}}]
    if member.organization:
        extension.append({"url": MANAGING_URL, "valueReference": {"reference": f"Organization/{member.organization}"}})
    if member.district:
        extension.append({"url": DISTRICT_URL, "valueCode": member.district})
    item: dict[str, Any] = {"extension": extension, "entity": {"reference": f"Patient/{member.patient_id}"}}
    if member.since:
        item["period"] = {"start": member.since}
    return item

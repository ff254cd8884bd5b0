"""The master (golden) resident: a Patient Qiao derives from the source records linked to it, rewritten whenever
they change. Sources are never altered.

Survivorship, field by field:
- identifier: `urn:qiao:mpi|{master id}`, then every source identifier (each institution's own numbers stay findable);
- birthDate and gender: what a valid ID number embeds when a source states the same, else the value most sources
  state, ties to the most recently updated source;
- name: the value (in Chinese characters when any source has them) most sources state, ties to the most recent;
- telecom: every distinct phone, the most recently updated source's first;
- address: the most recently updated source's;
- link: every source, as `seealso`.
"""

import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.principal import SYSTEM
from app.db import among
from app.mpi import facts, features, id_number, names
from app.mpi.tables import mpi_record
from app.store import repository, rules
from app.store.tables import resource, resource_version

MPI_SYSTEM = "urn:qiao:mpi"
MASTER_TAG = {"system": MPI_SYSTEM, "code": "master", "display": "master resident (golden record)"}


def new_master_id() -> str:
    return str(uuid.uuid4())


def is_master(content: dict[str, Any]) -> bool:
    return any(t.get("system") == MPI_SYSTEM and t.get("code") == "master" for t in (content.get("meta") or {}).get("tag") or [])


def refresh(session: Session, master_ids: Iterable[str], *, replaced_by: dict[str, str] | None = None) -> None:
    """Rewrite these masters from their sources. A master left without sources is deleted, or, when it was merged
    into another (`replaced_by`), kept inactive with a `replaced-by` link so that references to it still resolve."""
    replaced_by = replaced_by or {}
    masters = sorted(set(master_ids))
    if not masters:
        return
    sources = _sources(session, masters)
    found = repository.current_many(session, "Patient", masters, lock=True)
    writes = []
    for master_id in masters:
        content: dict[str, Any] | None
        if sources.get(master_id):
            content = build(master_id, sources[master_id])
        elif master_id in replaced_by:
            content = retired(master_id, replaced_by[master_id])
        elif master_id not in found or found[master_id].deleted:
            continue
        else:
            content = None
        writes.append(repository.Write("Patient", master_id, "PUT" if content else "DELETE", content, found.get(master_id)))
    written = repository.write_versions(session, writes)
    facts.remirror(session, masters)  # who cares for the master, and whose consent denies it, follow its records
    rules.after(session, written, SYSTEM)  # what follows the master (its registry entries) follows it now


Source = tuple[str, datetime, dict[str, Any], dict[str, Any]]  # id, last updated, content, the index's features (JSON)


def _sources(session: Session, master_ids: list[str]) -> dict[str, list[Source]]:
    """Each master's sources, in two indexed look-ups driven by the masters' records: one join let PostgreSQL, on
    statistics from a smaller table, scan every Patient for each write (a district's initial load crawled)."""
    if not master_ids:
        return {}
    connection = session.connection()
    records = {row.patient_id: row for row in connection.execute(
        select(mpi_record.c.patient_id, mpi_record.c.master_id, mpi_record.c.features).where(among(connection, mpi_record.c.master_id, master_ids)))}
    if not records:
        return {}
    rows = connection.execute(
        select(resource.c.res_id, resource.c.last_updated, resource_version.c.content)
        .join(resource_version, repository.CURRENT_VERSION)
        .where(resource.c.res_type == "Patient", among(connection, resource.c.res_id, records), resource.c.deleted.is_(False))
    ).all()
    found: dict[str, list[Source]] = {}
    for row in rows:
        record = records[row.res_id]
        found.setdefault(record.master_id, []).append(
            (row.res_id, row.last_updated, orjson.loads(row.content), orjson.loads(record.features)))
    return found


def build(master_id: str, sources: list[Source]) -> dict[str, Any]:
    newest = sorted(sources, key=lambda s: (s[1], s[0]), reverse=True)
    newest_first = [content for _, _, content, _ in newest]
    identifiers = [{"use": "official", "system": MPI_SYSTEM, "value": master_id}]
    seen = set()
    for content in newest_first:
        for identifier in content.get("identifier") or []:
            key = (identifier.get("system"), identifier.get("value"))
            if key not in seen and identifier.get("value"):
                seen.add(key)
                identifiers.append({k: v for k, v in identifier.items() if k in ("use", "type", "system", "value", "period", "assigner")})
    master: dict[str, Any] = {
        "resourceType": "Patient",
        "meta": {"tag": [MASTER_TAG]},
        "identifier": identifiers,
        "active": True,
    }
    name = _name(newest_first)
    if name:
        master["name"] = [name]
    embedded = _embedded([f for _, _, _, f in newest])
    for field, value in (("gender", _vote(newest_first, "gender", embedded.get("gender"))),
                         ("birthDate", _vote(newest_first, "birthDate", embedded.get("birthDate")))):
        if value:
            master[field] = value
    phones = _phones(newest_first)
    if phones:
        master["telecom"] = phones
    address = next((c["address"] for c in newest_first if c.get("address")), None)
    if address:
        master["address"] = address
    master["link"] = [{"other": {"reference": f"Patient/{source_id}"}, "type": "seealso"} for source_id in sorted(s[0] for s in sources)]
    return master


def retired(master_id: str, survivor: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "meta": {"tag": [MASTER_TAG]},
        "identifier": [{"use": "old", "system": MPI_SYSTEM, "value": master_id}],
        "active": False,
        "link": [{"other": {"reference": f"Patient/{survivor}"}, "type": "replaced-by"}],
    }


def _name(newest_first: list[dict[str, Any]]) -> dict[str, Any] | None:
    stated = [(n, orjson.dumps(n)) for c in newest_first for n in (c.get("name") or [])[:1]]
    if not stated:
        return None
    pool = [(n, text) for n, text in stated if names.HAN.search(text.decode())] or stated
    counts = Counter(text for _, text in pool)
    chosen: dict[str, Any] = max(pool, key=lambda n: counts[n[1]])[0]  # max keeps the first (newest) among equals
    return chosen


def _embedded(newest_first: list[dict[str, Any]]) -> dict[str, str]:
    """Sex and birth date from the newest valid ID number (the index's features, as JSON: only these two are read)."""
    for parsed in newest_first:
        number = parsed.get("id_number")
        if parsed.get("id_valid") and number:
            born = id_number.birth_date(number)
            return {"gender": id_number.sex(number), "birthDate": born.isoformat() if born else ""}
    return {}


def _vote(newest_first: list[dict[str, Any]], field: str, preferred: str | None) -> str | None:
    stated = [c[field] for c in newest_first if c.get(field)]
    if preferred and preferred in stated:
        return preferred
    if not stated:
        return None
    counts = Counter(stated)
    chosen: str = max(stated, key=lambda v: counts[v])
    return chosen


def _phones(newest_first: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    kept = []
    for content in newest_first:
        for telecom in content.get("telecom") or []:
            number = features.phone(telecom.get("value") or "") if telecom.get("system") in (None, "phone", "sms") else None
            if number and number not in seen:
                seen.add(number)
                kept.append({k: v for k, v in telecom.items() if k in ("system", "value", "use")})
    return kept

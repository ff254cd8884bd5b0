"""What the index answers and what a data steward decides: cross-references (IHE PIXm), scored candidates for a
Patient (FHIR $match), and the review queue."""

from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.auth import audit_trail, policy
from app.errors import Conflict, InvalidRequest, NotFound
from app.mpi import features, golden, index, linker
from app.mpi.golden import MPI_SYSTEM
from app.mpi.tables import mpi_record, mpi_review
from app.store import dates
from app.store import repository as store

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"


def cross_references(session: Session, source_identifier: str, target_systems: list[str]) -> dict[str, Any]:
    """PIXm: every identifier of every source record linked to the same master as the one identified, and each of
    those Patients (`targetId`), the master included."""
    principal = policy.principal_of(session)
    policy.require(principal, "Patient", "r")
    system, _, value = source_identifier.partition("|")
    if not system or not value:
        raise InvalidRequest("sourceIdentifier must be system|value", expression=["sourceIdentifier"])
    connection = session.connection()
    if system == MPI_SYSTEM:
        masters = {value} if linker.is_master(connection, value) else set()
    else:
        sources = store.match(session, "Patient", [("identifier", f"{system}|{value}")], limit=50)
        masters = set(connection.scalars(select(mpi_record.c.master_id).where(mpi_record.c.patient_id.in_(sources))))
    if not masters:
        raise NotFound(f"no resident is known by {system}|{value}", expression=["sourceIdentifier"])
    members = connection.execute(
        select(mpi_record.c.patient_id, mpi_record.c.master_id).where(mpi_record.c.master_id.in_(masters))
    ).all()
    parameters: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for master_id in sorted(masters):
        stored = store.read(session, "Patient", master_id, audit=False)
        for identifier in orjson.loads(stored.content or "{}").get("identifier") or []:
            key = (identifier.get("system"), identifier.get("value"))
            if key == (system, value) or key in seen or (target_systems and key[0] not in target_systems):
                continue
            seen.add(key)
            parameters.append({"name": "targetIdentifier", "valueIdentifier": {"system": key[0], "value": key[1]}})
        parameters.append({"name": "targetId", "valueReference": {"reference": f"Patient/{master_id}"}})
    parameters += [{"name": "targetId", "valueReference": {"reference": f"Patient/{p}"}} for p, _ in sorted(members)]
    audit_trail.record(principal, "read", patients=sorted(masters), query=f"Patient/$ihe-pix?sourceIdentifier={system}|…",
                       description="cross-reference")
    return {"resourceType": "Parameters", "parameter": parameters}


def match(session: Session, parameters: Any, base: str) -> dict[str, Any]:
    """$match: master residents that may be the Patient given, best first, scored and graded."""
    principal = policy.principal_of(session)
    policy.require(principal, "Patient", "s")
    patient, count, only_certain = _match_input(parameters)
    store.prepare("Patient", patient)
    candidates = linker.score(session.connection(), features.of_patient(patient))
    best: dict[str, linker.Candidate] = {}
    for candidate in candidates:  # best first: a master's best record speaks for it, unless one rules it out
        held = best.get(candidate.master_id)
        if held is None or (candidate.ruled_out and not held.ruled_out):
            best[candidate.master_id] = candidate
    ranked = sorted(best.values(), key=lambda c: (c.ruled_out, -c.probability))
    if only_certain:
        ranked = [c for c in ranked if c.grade == "certain"]
    ranked = ranked[:count]
    masters = store.read_visible(session, "Patient", [c.master_id for c in ranked])
    ranked = [c for c in ranked if c.master_id in masters]  # a master this client may not see is not named
    entries = []
    for candidate in ranked:
        stored = masters[candidate.master_id]
        entries.append({
            "fullUrl": f"{base}/Patient/{candidate.master_id}",
            "resource": orjson.loads(stored.content or "{}"),
            "search": {"mode": "match", "score": 0.0 if candidate.ruled_out else round(candidate.probability, 4),
                       "extension": [{"url": MATCH_GRADE, "valueCode": candidate.grade}]},
        })
    audit_trail.record(principal, "search", patients=[c.master_id for c in ranked], query="Patient/$match")
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}


def _match_input(parameters: Any) -> tuple[dict[str, Any], int, bool]:
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise InvalidRequest("$match takes a Parameters resource with a 'resource' parameter", expression=["Parameters"])
    values = {p.get("name"): p for p in parameters.get("parameter") or []}
    patient = (values.get("resource") or {}).get("resource")
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise InvalidRequest("the 'resource' parameter must hold a Patient", expression=["Parameters.parameter[resource]"])
    count = int((values.get("count") or {}).get("valueInteger") or 10)
    return patient, max(1, min(count, 100)), bool((values.get("onlyCertainMatches") or {}).get("valueBoolean"))


# --- review queue ----------------------------------------------------------------------------------------------


def reviews(session: Session, status: str = "open", limit: int = 100) -> list[dict[str, Any]]:
    policy.require(policy.principal_of(session), "Patient", "r")
    rows = session.connection().execute(
        select(mpi_review).where(mpi_review.c.status == status).order_by(mpi_review.c.id).limit(limit)
    ).all()
    return [_review(row) for row in rows]


def _review(row: Any) -> dict[str, Any]:
    return {"id": row.id, "patient": f"Patient/{row.patient_id}", "master": f"Patient/{row.master_id}",
            "probability": round(row.probability, 4), "comparisons": orjson.loads(row.levels), "status": row.status,
            "decidedBy": row.decided_by, "note": row.note}


def decide(session: Session, review_id: int, decision: str, note: str | None = None) -> dict[str, Any]:
    """A steward's decision: "same" moves the record (with its master's other records) into the candidate master;
    "different" records that the two never match again. Audited."""
    principal = policy.principal_of(session)
    policy.require(principal, "Patient", "u")
    if decision not in ("same", "different"):
        raise InvalidRequest("decision must be 'same' or 'different'", expression=["decision"])
    connection = session.connection()
    row = connection.execute(select(mpi_review).where(mpi_review.c.id == review_id).with_for_update()).first()
    if row is None:
        raise NotFound(f"review {review_id} is not known", expression=["review"])
    if row.status != "open":
        raise Conflict(f"review {review_id} was already decided ({row.status})", expression=["review"])
    now = dates.now()
    current = connection.scalar(select(mpi_record.c.master_id).where(mpi_record.c.patient_id == row.patient_id))
    if current is None:
        raise Conflict(f"Patient/{row.patient_id} has left the index", expression=["review"])
    note = " / ".join(n for n in (row.note, note) if n) or None  # what queued it (a HIS merge in conflict) stays said
    replaced_by: dict[str, str] = {}
    if decision == "same" and current != row.master_id:
        _refuse_two_people(connection, current, row.master_id)
        linker.merge_masters(session, current, row.master_id, actor=principal.client_id, note=note)
        replaced_by = {current: row.master_id}
    if decision == "different" and current == row.master_id:
        raise Conflict(f"Patient/{row.patient_id} already belongs to Patient/{row.master_id}: unmerge it instead", expression=["decision"])
    if decision == "different":
        others = connection.scalars(select(mpi_record.c.patient_id).where(mpi_record.c.master_id == row.master_id)).all()
        linker.declare_different(connection, [row.patient_id], others, actor=principal.client_id, now=now)
    connection.execute(update(mpi_review).where(mpi_review.c.id == review_id).values(
        status=decision, decided_at=now, decided_by=principal.client_id, note=note))
    golden.refresh(session, {current, row.master_id}, replaced_by=replaced_by)
    store.append_audit(session, [audit_trail.event(
        principal, "update", resources=[f"Patient/{row.patient_id}", f"Patient/{row.master_id}"],
        patients=[row.patient_id, row.master_id], description=f"resident match review: {decision}")])
    decided = connection.execute(select(mpi_review).where(mpi_review.c.id == review_id)).one()
    return _review(decided)


# --- merge and unmerge -----------------------------------------------------------------------------------------


def merge(session: Session, source: str, target: str, note: str | None = None) -> dict[str, Any]:
    """A steward's merge: the resident `source` (a master, or any of its source records) joins the resident
    `target`; the source's master is retired with a replaced-by link. Refused when two of their records carry
    different valid ID numbers. Audited, and undone by `unmerge`."""
    principal = policy.principal_of(session)
    policy.require(principal, "Patient", "u")
    connection = session.connection()
    retiring, surviving = _master(connection, source, "source"), _master(connection, target, "target")
    if retiring == surviving:
        raise Conflict(f"{source} and {target} are already one resident, Patient/{surviving}", expression=["target"])
    _refuse_two_people(connection, retiring, surviving)
    linker.merge_masters(session, retiring, surviving, actor=principal.client_id, note=note)
    golden.refresh(session, {retiring, surviving}, replaced_by={retiring: surviving})
    return _changed(session, principal, "resident merge", surviving, retiring)


def unmerge(session: Session, patients: list[str], note: str | None = None) -> dict[str, Any]:
    """A steward's unmerge: these source records (of one master) become a resident of their own, and matching
    never joins them to the records they leave again. Audited."""
    principal = policy.principal_of(session)
    policy.require(principal, "Patient", "u")
    if not patients:
        raise InvalidRequest("name the source records to unmerge: {\"patient\": [\"Patient/…\"]}", expression=["patient"])
    left, formed = linker.split(session, [_id(p) for p in patients], actor=principal.client_id, note=note)
    golden.refresh(session, {left, formed})
    return _changed(session, principal, "resident unmerge", formed, left)


def _refuse_two_people(connection: Any, master_a: str, master_b: str) -> None:
    conflict = linker.joining_conflict(connection, master_a, master_b, steward=True)
    if conflict:
        raise Conflict(f"{conflict}: two people, whatever else agrees; correct the wrong number at its source first",
                       expression=["target"])


def _id(reference: str) -> str:
    return reference.removeprefix("Patient/")


def _master(connection: Any, reference: str, name: str) -> str:
    patient_id = _id(reference or "")
    if linker.is_master(connection, patient_id):
        return patient_id
    master_id = connection.scalar(select(mpi_record.c.master_id).where(mpi_record.c.patient_id == patient_id))
    if master_id is None:
        raise NotFound(f"{name} Patient/{patient_id} is neither a master nor a source record in the index", expression=[name])
    return str(master_id)


def _changed(session: Session, principal: Any, description: str, master: str, other: str) -> dict[str, Any]:
    """The two masters as they now stand, after auditing the change."""
    members = index.sources(session, [master, other])
    store.append_audit(session, [audit_trail.event(
        principal, "update", resources=[f"Patient/{p}" for p in sorted(members)] + [f"Patient/{master}", f"Patient/{other}"],
        patients=[master, other], description=description)])
    return {"master": f"Patient/{master}", "records": sorted(f"Patient/{p}" for p, m in members.items() if m == master),
            "other": f"Patient/{other}", "otherRecords": sorted(f"Patient/{p}" for p, m in members.items() if m == other)}

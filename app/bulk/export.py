"""Running an export: every resource as it was at the job's transaction time, read in batches in id order and
written as ndjson files of one type each (stored bytes, not re-serialised), so memory stays flat at any size.

Point in time without a long transaction: the version exported is the latest one with lastUpdated at or before the
transaction time (versions are immutable), and before fixing that time the job waits until every write transaction
that began before it has ended. Nothing a later `_since` export relies on is missed, and a job interrupted by a
restart resumes after its last finished file.
"""

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl

import orjson
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from app import db
from app.auth import membership, policy
from app.auth.principal import Principal
from app.bulk import jobs
from app.bulk.params import GROUP, SYSTEM, ExportRequest
from app.bulk.tables import bulk_file, bulk_job
from app.config import get_settings
from app.errors import QiaoError
from app.fhir import resources
from app.fhir import search as fhir_search
from app.logging import fields
from app.store import dates, query
from app.store.tables import resource

log = logging.getLogger("qiao.bulk")
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
#: changes whose transaction began this long before the export are always in it (the settle wait covers the rest)
SETTLE_MARGIN_SECONDS = 0.2


def run(job_id: str, stopping: threading.Event | None = None) -> None:
    """Run (or resume) a job this process has claimed, to completion, failure or cancellation; when `stopping` is
    set (the server shuts down) it stops after the batch in hand and leaves the job to be resumed."""
    with db.read_session() as session:
        job = jobs.load(session, job_id)
    folder = jobs.directory(job_id)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        at = dates.aware(job.transaction_time) if job.transaction_time else _fix_transaction_time(job)
        Export(job, at, folder, stopping or threading.Event()).run()
        with db.transaction() as session:
            jobs.finish(session, job_id)
        log.info("bulk.complete", extra=fields(job=job_id))
    except Stopped:
        with db.transaction() as session:
            jobs.release(session, job_id)
        log.info("bulk.stopped", extra=fields(job=job_id))
    except jobs.Cancelled:
        shutil.rmtree(folder, ignore_errors=True)
        log.info("bulk.cancelled", extra=fields(job=job_id))
    except Exception as error:  # noqa: BLE001 - the job fails with a message; the client sees it when it polls
        if _cancelled(job_id):  # a DELETE removed the folder under the file being written
            shutil.rmtree(folder, ignore_errors=True)
            log.info("bulk.cancelled", extra=fields(job=job_id))
            return
        if isinstance(error, QiaoError):
            message = error.message
        else:
            reference = uuid.uuid4().hex[:12]
            message = f"internal error; reference {reference}"
            log.error("bulk.failed", exc_info=error, extra=fields(job=job_id, reference=reference))
        with db.transaction() as session:
            jobs.finish(session, job_id, error=message)


def _cancelled(job_id: str) -> bool:
    with db.read_session() as session:
        return bool(jobs.load(session, job_id).status == "cancelled")


def _fix_transaction_time(job: Any) -> datetime:
    """The transaction time: a moment every write transaction that began before it has ended."""
    at = dates.now() - timedelta(milliseconds=1)
    time.sleep(SETTLE_MARGIN_SECONDS)  # a writer takes its lastUpdated a moment before its transaction begins
    if not db.wait_for_writers(datetime.now(at.tzinfo), get_settings().bulk_settle_seconds):
        log.warning("bulk.settle_timeout", extra=fields(job=job.id))
    request = ExportRequest.from_json(job.params)
    with db.transaction() as session:
        session.execute(update(bulk_job).where(bulk_job.c.id == job.id).values(transaction_time=at))
        if request.ignored:
            path = jobs.directory(job.id) / jobs.file_name("error", "OperationOutcome", 1)
            outcomes = [{"resourceType": "OperationOutcome", "issue": [issue]} for issue in request.ignored]
            path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in outcomes))
            session.execute(insert(bulk_file).values(job_id=job.id, kind="error", res_type="OperationOutcome", part=1,
                                                     resources=len(outcomes), ends_type=True))
    return at


class Export:
    """One job's types, each read in batches after the last id written and cut into files of at most
    `bulk_file_resources` lines."""

    def __init__(self, job: Any, at: datetime, folder: Path, stopping: threading.Event) -> None:
        self.job = job
        self.stopping = stopping
        self.at = at
        self.folder = folder
        self.request = ExportRequest.from_json(job.params)
        self.principal: Principal = jobs.principal_of(job)
        settings = get_settings()
        self.batch = settings.bulk_batch_size
        self.file_limit = settings.bulk_file_resources
        self.written = 0
        self.progress = ""

    def run(self) -> None:
        with db.read_session() as session:
            finished = session.execute(select(bulk_file).where(bulk_file.c.job_id == self.job.id)).all()
            types = self._types(session)
        self.written = sum(f.resources for f in finished if f.kind == "output")
        last = {(f.kind, f.res_type): f for f in sorted(finished, key=lambda f: f.part)}
        kinds = ["output", "deleted"] if self.request.since else ["output"]
        for kind in kinds:
            for number, resource_type in enumerate(types, 1):
                self.progress = f"{kind} {resource_type} (type {number} of {len(types)})"
                previous = last.get((kind, resource_type))
                if previous is None or not previous.ends_type:
                    self._export(kind, resource_type, previous)

    def _types(self, session: Any) -> list[str]:
        """The requested types, or every type present (of the Patient compartment below system level) that the
        client may read; the audit trail only when the token's scope names it."""
        if self.request.types:
            return self.request.types
        statement = select(resource.c.res_type).distinct()
        if self.request.level != SYSTEM:
            statement = statement.where(resource.c.patient.is_not(None))
        present = session.scalars(statement).all()
        audit_trail = self.principal.scopes.allows_explicitly(policy.AUDIT_TYPE, "r")  # as in system history
        return sorted(t for t in present if policy.may(self.principal, t, "r") and (t != policy.AUDIT_TYPE or audit_trail))

    def _export(self, kind: str, resource_type: str, previous: Any) -> None:
        after = previous.last_res_id if previous else ""
        part = previous.part + 1 if previous else 1
        statement, params, after_name = self._statement(kind, resource_type)
        keep = self._kept_elements(resource_type)
        ended = False
        while not ended:
            name = jobs.file_name(kind, resource_type, part)
            partial = self.folder / (name + ".part")
            count = 0
            with partial.open("wb") as out:
                while count < self.file_limit:
                    wanted = min(self.batch, self.file_limit - count)
                    with db.read_session() as session:
                        rows = session.connection().execute(statement, params | {after_name: after, "limit": wanted}).all()
                        if resource_type == "Group" and kind == "output":
                            rows = _members_masked(session, self.principal, rows)
                    if rows:
                        after = rows[-1][0]
                        count += self._write(out, kind, resource_type, [row for row in rows if row[1]], keep)
                    if len(rows) < wanted:
                        ended = True
                        break
                    if self.stopping.is_set():
                        raise Stopped(self.job.id)
                    with db.transaction() as session:
                        jobs.renew(session, self.job.id, self._progress(count if kind == "output" else 0))
            partial.replace(self.folder / name)
            if kind == "output":
                self.written += count
            with db.transaction() as session:
                jobs.renew(session, self.job.id, self._progress(0))
                session.execute(insert(bulk_file).values(job_id=self.job.id, kind=kind, res_type=resource_type, part=part,
                                                         resources=count, last_res_id=after or None, ends_type=ended))
            if not count:
                (self.folder / name).unlink()
            part += 1

    def _progress(self, in_file: int) -> str:
        return f"{self.written + in_file:,} resources written; {self.progress}"

    def _write(self, out: IO[bytes], kind: str, resource_type: str, rows: Sequence[Any], keep: frozenset[str] | None) -> int:
        if not rows:
            return 0
        if kind == "deleted":
            entries = [{"request": {"method": "DELETE", "url": f"{resource_type}/{row[0]}"}} for row in rows]
            out.write(orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}) + b"\n")
            return 1
        if keep is None:
            out.write("".join(f"{row[2]}\n" for row in rows).encode())
        else:
            out.write(b"".join(orjson.dumps(subset(orjson.loads(row[2]), keep)) + b"\n" for row in rows))
        return len(rows)

    def _kept_elements(self, resource_type: str) -> frozenset[str] | None:
        named = [e.rpartition(".")[2] for e in self.request.elements if e.rpartition(".")[0] in ("", resource_type)]
        if not named:
            return None
        return frozenset(named) | resources.required_elements(resource_type) | {"resourceType", "id", "meta"}

    def _statement(self, kind: str, resource_type: str) -> tuple[Any, dict[str, Any], str]:
        """The batch query: the next resources after an id (in the index's order, so a batch costs its own size),
        each with whether its version current at the transaction time is exported, and that version's content.

        Conditions on the version are in the join, not the WHERE: a batch then has a row per resource scanned, and
        a short batch means the end of the type."""
        sql = query.Sql()
        at = sql.param(self.at, query.TIMESTAMP)
        after = sql.param("")
        where = [f"r.res_type = {sql.name(resource_type)}", f"r.res_id > {after}"]
        if self.request.level != SYSTEM:
            where.append("r.patient IS NOT NULL")
            if self.request.level == GROUP or self.request.patients:
                where.append(f"r.patient IN (SELECT bp.patient_id FROM bulk_patient bp WHERE bp.job_id = {sql.param(self.job.id)})")
        filters = self.request.type_filters.get(resource_type)
        if filters and kind == "output":
            where.append("(" + " OR ".join(_filter_sql(sql, resource_type, f) for f in filters) + ")")
        visible = policy.visible_sql(sql, self.principal, "r", [resource_type])
        if visible:
            where.append(visible)
        version = (f"CASE WHEN r.last_updated <= {at} THEN r.version_id ELSE (SELECT max(v2.version_id)"
                   f" FROM resource_version v2 WHERE v2.resource_pk = r.pk AND v2.last_updated <= {at}) END")
        joined = ["v.resource_pk = b.pk", "v.version_id = b.version_id",
                  "v.deleted = TRUE" if kind == "deleted" else "v.deleted = FALSE"]
        if self.request.since:
            joined.append(f"v.last_updated > {sql.param(datetime.fromisoformat(self.request.since), query.TIMESTAMP)}")
        content = "NULL" if kind == "deleted" else "CAST(v.content AS TEXT)"
        statement = sql.statement(
            f"SELECT b.res_id, v.resource_pk IS NOT NULL, {content} FROM"
            f" (SELECT r.pk, r.res_id, {version} AS version_id FROM resource r WHERE {' AND '.join(where)}"
            f"  ORDER BY r.res_id LIMIT :limit) b"
            f" LEFT JOIN resource_version v ON {' AND '.join(joined)} ORDER BY b.res_id"
        )
        return statement, dict(sql.params), after[1:]


def _members_masked(session: Session, principal: Principal, rows: Sequence[Any]) -> list[Any]:
    """Exported Groups with only the members the client may see (app/auth/membership.py)."""
    contents = membership.masked(session, principal, [row[2] or "" for row in rows])
    return [(row[0], row[1], content if row[2] else None) for row, content in zip(rows, contents, strict=True)]


class Stopped(Exception):
    """The server is shutting down; the job resumes from its last finished file in the next process."""


def _filter_sql(sql: query.Sql, resource_type: str, query_string: str) -> str:
    settings = get_settings()
    request = fhir_search.parse(resource_type, parse_qsl(query_string, keep_blank_values=True))
    clauses = [query.condition(sql, "r", resource_type, c, zone=settings.zone, base_url=settings.base_url) for c in request.criteria]
    return "(" + " AND ".join(clauses) + ")"


def subset(content: dict[str, Any], keep: frozenset[str]) -> dict[str, Any]:
    """Only the kept root elements (a choice element by its stem: `value` keeps valueQuantity), tagged SUBSETTED."""
    kept = {key: value for key, value in content.items() if _kept(key.lstrip("_"), keep)}
    meta = dict(kept.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    kept["meta"] = meta
    return kept


def _kept(name: str, keep: frozenset[str]) -> bool:
    return name in keep or any(name.startswith(k) and name[len(k):][:1].isupper() for k in keep)

"""Bulk Data export jobs: kick-off, status and manifest, cancel and files, for the client that asked; and their
claim by a server process's worker (a lease, so a job whose process died is taken up by another).

A job is a row written in the kick-off's transaction (the outbox of STYLE 3.3.3), so it exists exactly when the
202 was sent. Its files are written under `data_dir/bulk/<job id>/` and listed in `bulk_file` once complete.
"""

import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.orm import Session

from app.auth import audit_trail, policy
from app.auth import scopes as scope_syntax
from app.auth.principal import Principal
from app.auth.relations import reference_id
from app.bulk import params
from app.bulk.tables import bulk_file, bulk_job, bulk_patient
from app.cdc import registries
from app.config import get_settings
from app.db import bulk_insert
from app.errors import Forbidden, InvalidRequest, NotFound, QiaoError, TooManyRequests
from app.mpi import index
from app.store import dates
from app.store import repository as store

ACTIVE = ("accepted", "running")
LEASE_SECONDS = 60
#: a job whose worker died this many times fails instead of starting again
MAX_ATTEMPTS = 3


def directory(job_id: str) -> Path:
    return get_settings().data_dir / "bulk" / job_id


def file_name(kind: str, resource_type: str, part: int) -> str:
    return f"{kind}-{resource_type}-{part}.ndjson"


def principal_of(job: Any) -> Principal:
    """The principal the job runs for: the client that asked, with the scopes and access it had then."""
    return Principal(job.client_id, job.org, scope_syntax.parse(job.scope), access=job.access, purpose=job.purpose)


def kick_off(session: Session, principal: Principal, request: params.ExportRequest, url: str, *, requires_token: bool) -> str:
    """Check what may be exported, fix the residents a patient- or group-level export is limited to, and queue
    the job; its id names the polling URL."""
    _check_types(principal, request)
    active = session.scalar(select(func.count()).select_from(bulk_job).where(
        bulk_job.c.client_id == principal.client_id, bulk_job.c.status.in_(ACTIVE)))
    settings = get_settings()
    if (active or 0) >= settings.bulk_max_jobs_per_client:
        raise TooManyRequests(f"{settings.bulk_max_jobs_per_client} exports of this client are still running; wait for"
                              " one to finish or cancel it", retry_after=10 * max(settings.bulk_retry_after_seconds, 1))
    job_id = uuid.uuid4().hex
    patients = _residents(session, principal, request)
    now = dates.now()
    session.execute(insert(bulk_job).values(
        id=job_id, client_id=principal.client_id, org=principal.organization, access=principal.access,
        scope=str(principal.scopes), purpose=principal.purpose, request=url, params=request.to_json(),
        requires_token=requires_token, status="accepted", created_at=now, attempts=0,
    ))
    bulk_insert(session, bulk_patient, [{"job_id": job_id, "patient_id": p} for p in sorted(patients or ())])
    audit_trail.record(principal, "export", patients=request.patients, query=url)
    return job_id


def _check_types(principal: Principal, request: params.ExportRequest) -> None:
    refused = [t for t in request.types if not policy.may(principal, t, "r")]
    if refused:
        raise Forbidden(f"the token's scopes do not allow reading {', '.join(refused)} (needs system/<type>.r)", expression=["_type"])


def _residents(session: Session, principal: Principal, request: params.ExportRequest) -> set[str] | None:
    """The Patient ids a patient- or group-level export may touch (None: every resident the client may see).
    A Group's members that are master residents bring the source records linked to them; a registry's members are
    those the client may see."""
    if request.level == params.SYSTEM:
        return None
    if request.level == params.GROUP:
        assert request.group_id is not None
        registry = registries.REGISTRIES.get(request.group_id)
        if registry is not None:
            reference = f"Group/{registry.id}"
            members = {m.patient_id for m in registries.members(session, registry, principal)}
        else:
            reference = store.read(session, "Group", request.group_id).reference
            members = _members(store.content(session, "Group", request.group_id) or {})
        if not members:
            raise InvalidRequest(f"{reference} has no Patient members to export", expression=["Group.member"])
        if request.patients:
            outside = sorted(set(request.patients) - members)
            if outside:
                raise InvalidRequest(f"not members of {reference}: {', '.join('Patient/' + p for p in outside)}",
                                     expression=["patient"])
            members = set(request.patients)
    else:
        if not request.patients:
            return None
        members = set(request.patients)
        known = {i for i, found in store.current_many(session, "Patient", members).items() if not found.deleted}
        if members - known:
            raise InvalidRequest(f"unknown patients: {', '.join('Patient/' + p for p in sorted(members - known))}",
                                 expression=["patient"])
    return members | set(index.sources(session, members))


def _members(group: dict[str, Any]) -> set[str]:
    members = set()
    for member in group.get("member") or []:
        if member.get("inactive"):
            continue
        member_id = reference_id(member.get("entity"), "Patient")
        if member_id:
            members.add(member_id)
    return members


@dataclass
class Status:
    """What the polling URL answers: 202 with progress, 200 with the manifest, or an error."""

    status_code: int
    manifest: dict[str, Any] | None = None
    progress: str | None = None
    expires: datetime | None = None


def status(session: Session, principal: Principal, job_id: str, base: str) -> Status:
    job = _job_of(session, principal, job_id)
    if job.status in ACTIVE:
        now = dates.now()
        wait = get_settings().bulk_retry_after_seconds
        if job.polled_at is not None and now - dates.aware(job.polled_at) < timedelta(seconds=wait / 2):
            raise TooManyRequests(f"polled too often; wait {wait} s between status requests", retry_after=wait)
        session.execute(update(bulk_job).where(bulk_job.c.id == job_id).values(polled_at=now))
        return Status(202, progress=job.progress or ("queued" if job.status == "accepted" else "started"))
    if job.status == "failed":
        raise ExportFailed(f"export {job_id} failed: {job.error}")
    manifest = _manifest(session, job, base)
    expires = dates.aware(job.completed_at) + timedelta(hours=get_settings().bulk_retention_hours)
    return Status(200, manifest=manifest, expires=expires)


def _manifest(session: Session, job: Any, base: str) -> dict[str, Any]:
    files = session.execute(select(bulk_file).where(bulk_file.c.job_id == job.id).order_by(bulk_file.c.pk)).all()
    listed: dict[str, list[dict[str, Any]]] = {"output": [], "deleted": [], "error": []}
    for f in files:
        if f.resources:
            url = f"{base}/bulk/{job.id}/{file_name(f.kind, f.res_type, f.part)}"
            listed[f.kind].append({"type": f.res_type, "url": url, "count": f.resources})
    manifest: dict[str, Any] = {
        "transactionTime": dates.instant(dates.aware(job.transaction_time)),
        "request": job.request,
        "requiresAccessToken": job.requires_token,
        "output": listed["output"],
        "error": listed["error"],
    }
    if listed["deleted"]:
        manifest["deleted"] = listed["deleted"]
    return manifest


def cancel(session: Session, principal: Principal, job_id: str) -> None:
    """Cancel a running export or free a finished one's files; its polling URL then answers 404."""
    job = _job_of(session, principal, job_id)
    session.execute(update(bulk_job).where(bulk_job.c.id == job.id).values(status="cancelled", lease_until=None))
    shutil.rmtree(directory(job_id), ignore_errors=True)  # a running worker notices at its next batch and stops


def file_path(session: Session, principal: Principal, job_id: str, name: str) -> Path:
    """The path of a finished file of a complete job the principal started; the download is audited."""
    job = _job_of(session, principal, job_id)
    if job.status != "complete":
        raise NotFound(f"export {job_id} has no files yet", expression=["url"])
    listed = {file_name(f.kind, f.res_type, f.part) for f in session.execute(
        select(bulk_file.c.kind, bulk_file.c.res_type, bulk_file.c.part).where(bulk_file.c.job_id == job_id))}
    path = directory(job_id) / name
    if name not in listed or not path.is_file():
        raise NotFound(f"export {job_id} has no file {name!r}", expression=["url"])
    audit_trail.record(principal, "export", query=f"bulk/{job_id}/{name}")
    return path


def _job_of(session: Session, principal: Principal, job_id: str) -> Any:
    """The job, if it is the principal's own (another client's export is as good as unknown to it)."""
    row = session.execute(select(bulk_job).where(bulk_job.c.id == job_id)).first()
    if row is None or (row.client_id != principal.client_id and not principal.unrestricted):
        raise NotFound(f"no export {job_id} of this client", expression=["url"])
    if row.status == "cancelled":
        raise NotFound(f"export {job_id} was cancelled", expression=["url"])
    if row.status == "expired":
        raise NotFound(f"export {job_id} has expired and its files were deleted; start a new one", expression=["url"])
    return row


class ExportFailed(QiaoError):
    status, code = 500, "exception"


# --- the workers' side ---------------------------------------------------------------------------------------


def claim(session: Session) -> str | None:
    """Take one job that is queued, or whose worker's lease ran out (its process died); None when there is none.
    A job interrupted MAX_ATTEMPTS times fails rather than starting yet again."""
    now = dates.now()
    c = bulk_job.c
    free = or_(c.lease_until.is_(None), c.lease_until < now)
    for row in session.execute(select(c.id, c.attempts).where(c.status.in_(ACTIVE), free).order_by(c.created_at).limit(5)):
        if row.attempts >= MAX_ATTEMPTS:
            session.execute(update(bulk_job).where(c.id == row.id, c.status.in_(ACTIVE), free).values(
                status="failed", error=f"the export was interrupted {row.attempts} times (server restarts); start a new one"))
            continue
        taken = session.connection().execute(update(bulk_job).where(c.id == row.id, c.status.in_(ACTIVE), free).values(
            status="running", attempts=c.attempts + 1, lease_until=now + timedelta(seconds=LEASE_SECONDS))).rowcount
        if taken:
            return str(row.id)
    return None


class Cancelled(Exception):
    """The job was cancelled (or its lease taken over) while this worker ran it."""


def load(session: Session, job_id: str) -> SimpleNamespace:
    row = session.execute(select(bulk_job).where(bulk_job.c.id == job_id)).one()
    return SimpleNamespace(**row._mapping)


def renew(session: Session, job_id: str, progress: str) -> None:
    """Extend the lease and record progress; raise Cancelled if the job is no longer this worker's to run."""
    renewed = session.connection().execute(update(bulk_job).where(bulk_job.c.id == job_id, bulk_job.c.status == "running").values(
        lease_until=dates.now() + timedelta(seconds=LEASE_SECONDS), progress=progress[:100])).rowcount
    if not renewed:
        raise Cancelled(job_id)


def release(session: Session, job_id: str) -> None:
    """Give a job back on shutdown: the next process resumes it at once, and the stop does not count as a failure."""
    session.execute(update(bulk_job).where(bulk_job.c.id == job_id, bulk_job.c.status == "running").values(
        lease_until=None, attempts=bulk_job.c.attempts - 1))


def finish(session: Session, job_id: str, *, error: str | None = None) -> None:
    values: dict[str, Any] = {"lease_until": None, "completed_at": dates.now()}
    values.update({"status": "failed", "error": error} if error else {"status": "complete", "progress": None})
    session.execute(update(bulk_job).where(bulk_job.c.id == job_id, bulk_job.c.status == "running").values(**values))


def expire(session: Session) -> None:
    """Delete the files of exports finished longer ago than the retention, and of cancelled or failed ones."""
    before = dates.now() - timedelta(hours=get_settings().bulk_retention_hours)
    c = bulk_job.c
    session.execute(update(bulk_job).where(c.status == "complete", c.completed_at < before).values(status="expired"))
    gone = session.scalars(select(c.id).where(c.status.in_(("expired", "cancelled", "failed"))))
    for job_id in gone:
        if directory(job_id).exists():
            shutil.rmtree(directory(job_id), ignore_errors=True)

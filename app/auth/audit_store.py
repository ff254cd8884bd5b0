"""The audit trail's storage: writing queued read audits, sealing every AuditEvent into a hash chain, verifying it.

AuditEvents are FHIR resources in the store (searchable like any other, by an auditor scope), immutable through the
API. Each is appended to `audit_chain` with chain_hash = SHA-256(previous chain_hash + SHA-256(content)), under a lock
so that one chainer runs at a time whatever the number of workers: the queue writer chains the events it writes in
the transaction that writes them; an event written with the write it describes is listed in `audit_pending` and
chained by the sealer after it commits. Altering, removing or reordering a chained event breaks the chain, which
`qiao audit verify` reports.
"""

import hashlib
import logging
import threading
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from app import db
from app.auth import audit_trail
from app.auth.tables import audit_chain, audit_pending
from app.logging import fields
from app.store import repository as store
from app.store.tables import resource_version

log = logging.getLogger("qiao.audit")
GENESIS = "0" * 64
SEAL_BATCH = 5000


_flushing = threading.Lock()


def flush() -> int:
    """Write every queued audit event now; returns how many. When it returns, every event queued before the call is
    committed, also those a concurrent flush (the writer thread) had taken."""
    with _flushing:
        return _flush()


def _flush() -> int:
    """Only what was queued when it began: draining until the queue is empty would, under load, chase the handlers
    and write an AuditEvent every few milliseconds for a handful of accesses each, not one per interval. The events
    are chained in the transaction that writes them (no pending row, no second transaction to seal them)."""
    written, due = 0, len(audit_trail.queue)
    while written < due and (batch := audit_trail.queue.take(min(5000, due - written))):
        try:
            with db.transaction() as session:
                pks = store.append_audit(session, audit_trail.events(batch), pending=False)
                db.lock_key(session, "audit-chain")
                _seal_batch(session, pks)
        except BaseException:
            audit_trail.queue.put_back(batch)
            raise
        written += len(batch)
    return written


def seal() -> int:
    """Chain every committed, unsealed AuditEvent (those written with the writes they describe); returns how many
    were sealed."""
    with db.read_session() as session:
        if session.execute(select(audit_pending.c.resource_pk).limit(1)).first() is None:
            return 0  # nothing to seal: take no write lock (SQLite has one for the whole database)
    sealed = 0
    while True:
        with db.transaction() as session:
            db.lock_key(session, "audit-chain")
            count = _seal_batch(session)
        sealed += count
        if count < SEAL_BATCH:
            return sealed


def _seal_batch(session: Session, pks: list[int] | None = None) -> int:
    """Append events to the chain: these (`pks`), or the next pending ones. The caller holds the chain's lock. The
    hash is over the content as the database gives it back, which is what `verify` reads."""
    head = session.execute(select(audit_chain.c.position, audit_chain.c.chain_hash).order_by(audit_chain.c.position.desc()).limit(1)).first()
    position, previous = (head.position, head.chain_hash) if head else (0, GENESIS)
    statement = select(resource_version.c.resource_pk, resource_version.c.content).where(resource_version.c.version_id == 1)
    if pks is None:
        statement = (statement.join(audit_pending, resource_version.c.resource_pk == audit_pending.c.resource_pk)
                     .order_by(audit_pending.c.resource_pk).limit(SEAL_BATCH))
    elif pks:
        statement = statement.where(resource_version.c.resource_pk.in_(pks)).order_by(resource_version.c.resource_pk)
    else:
        return 0
    links = []
    for resource_pk, content in session.execute(statement).all():
        position += 1
        content_hash = hashlib.sha256(content.encode()).hexdigest()
        previous = chain(previous, content_hash)
        links.append({"position": position, "resource_pk": resource_pk, "content_hash": content_hash, "chain_hash": previous})
    if links:
        session.execute(insert(audit_chain), links)
        if pks is None:
            session.execute(delete(audit_pending).where(audit_pending.c.resource_pk.in_([link["resource_pk"] for link in links])))
    return len(links)


def chain(previous: str, content_hash: str) -> str:
    return hashlib.sha256(f"{previous}{content_hash}".encode()).hexdigest()


@dataclass
class Verification:
    sealed: int
    pending: int
    head: str
    breaks: list[str]

    @property
    def intact(self) -> bool:
        return not self.breaks


def verify(session: Session) -> Verification:
    """Recompute the chain from the stored events; every break names its position and what is wrong."""
    breaks: list[str] = []
    previous, position = GENESIS, 0
    statement = (
        select(audit_chain.c.position, audit_chain.c.content_hash, audit_chain.c.chain_hash,
               resource_version.c.content, resource_version.c.version_id)
        .outerjoin(resource_version, (resource_version.c.resource_pk == audit_chain.c.resource_pk) & (resource_version.c.version_id == 1))
        .order_by(audit_chain.c.position)
    )
    for row in session.execute(statement).yield_per(5000):
        position += 1
        if row.position != position:
            breaks.append(f"position {position}: missing (the chain jumps to {row.position})")
            position = row.position
        if row.version_id is None:
            breaks.append(f"position {row.position}: the AuditEvent is gone")
        elif hashlib.sha256(row.content.encode()).hexdigest() != row.content_hash:
            breaks.append(f"position {row.position}: the AuditEvent's content was altered")
        if chain(previous, row.content_hash) != row.chain_hash:
            breaks.append(f"position {row.position}: the chain hash does not follow from the previous one")
        previous = row.chain_hash
    pending = int(session.execute(select(func.count()).select_from(audit_pending)).scalar_one())
    return Verification(position, pending, previous, breaks)


class Writer:
    """A background thread per server process: writes queued audits and seals the chain every few hundred ms."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qiao-audit", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop, writing what is still queued."""
        self._stop.set()
        self._thread.join(timeout=30)
        self._once()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._once()

    def _once(self) -> None:
        try:
            flush()
            seal()
        except Exception as error:  # noqa: BLE001 - keep auditing; the events stay queued or pending
            log.error("audit.write_failed", extra=fields(error=type(error).__name__, queued=len(audit_trail.queue)))

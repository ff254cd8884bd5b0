"""Online matching while `qiao mpi rebuild` runs (PostgreSQL). Patient writes go on; their matching waits: each
written record is noted (`mpi_deferred`) and left where it was, and the rebuild, once its own placements are
written, places the noted records through the online path. A rebuild that read the records before a write, and
then rewrote the index, would otherwise undo what that write placed.

Three advisory locks:
- RUNNING: held by a rebuild for its whole run; a second rebuild is refused.
- PLACING: a write that matches holds it shared until it commits; a rebuild holds it exclusive, so it starts once
  the writes in flight have committed, and writes that come later defer.
- DEFERRING: a write that defers holds it shared until it commits. At the end the rebuild takes it exclusive (the
  deferring writes in flight have committed), places what they noted, then lets PLACING go before DEFERRING: a
  write that waited on DEFERRING finds PLACING free and matches, so nothing is noted that no rebuild will place.

SQLite (one writer at a time, the embedded default): nothing is deferred; run a rebuild there with no writes.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from app import db
from app.errors import Conflict
from app.mpi.tables import mpi_deferred
from app.store import dates


@lru_cache(maxsize=16)
def _keys(database: str) -> tuple[int, int, int]:
    """RUNNING, PLACING, DEFERRING of one database and schema (advisory locks are the server's, per database: two
    deployments in schemas of one database must not wait for each other)."""
    running, placing, deferring = (db.advisory_key(f"mpi:rebuild:{name}:{database}") for name in ("running", "placing", "deferring"))
    return running, placing, deferring


def _keys_of(bind: Any) -> tuple[int, int, int]:
    return _keys(bind.url.render_as_string(hide_password=True))


def may_place(session: Session) -> bool:
    """In a Patient write's transaction: whether to match now (False while a rebuild runs: `defer` instead)."""
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        return True
    _, placing, deferring = _keys_of(bind)
    if _try_shared(session, placing):
        return True
    session.execute(text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": deferring})
    return _try_shared(session, placing)  # the rebuild may have ended while this write waited


def _try_shared(session: Session, key: int) -> bool:
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock_shared(:k)"), {"k": key}).scalar())


def defer(session: Session, patient_ids: list[str]) -> None:
    """Note records whose matching waits for the running rebuild."""
    if patient_ids:
        now = dates.now()
        session.execute(postgresql.insert(mpi_deferred).on_conflict_do_nothing(),
                        [{"patient_id": patient_id, "deferred_at": now} for patient_id in patient_ids])


class Hold:
    """A rebuild's locks, on a connection of its own, held across its many transactions."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._held: list[int] = []
        self.running, self.placing, self.deferring = _keys_of(connection.engine) if connection is not None else (0, 0, 0)

    def take(self, key: int, *, wait: bool = True) -> bool:
        if self._connection is None:
            return True
        if wait:
            self._connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        taken = wait or self._connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        if taken:
            self._held.append(key)
        return bool(taken)

    def close_deferrals(self) -> None:
        """Wait until the deferring writes in flight have committed; later ones wait for `release`."""
        self.take(self.deferring)

    def release(self) -> None:
        if self._connection is None:
            return
        for key in sorted(self._held, key=(self.placing, self.deferring, self.running).index):  # placing first: see the docstring
            self._connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        self._connection.close()
        self._connection = None


@contextmanager
def held() -> Iterator[Hold]:
    """Hold the rebuild's locks for the block; Conflict if another rebuild is running."""
    engine = db.get_engine()
    if engine.dialect.name != "postgresql":
        yield Hold(None)
        return
    hold = Hold(engine.connect().execution_options(isolation_level="AUTOCOMMIT"))
    try:
        if not hold.take(hold.running, wait=False):
            raise Conflict("a rebuild of the master patient index is already running", expression=["mpi"])
        hold.take(hold.placing)  # the writes in flight commit first
        yield hold
    finally:
        hold.release()

"""Work that falls due with the passage of time rather than with a write: a registry member's enrolment ends on a
date it named months ago, and nothing is written that day. Each pass is handed the stretch of time it has not seen,
(done_until, now], finds what fell due in it and handles it in batches, one transaction each. Every server process
runs the clock every `clock_seconds` (app/periodic.py), and `qiao clock` runs it once. A pass's watermark is kept in
`clock_pass` with a lease, so that one of them runs a pass at a time, and a pass interrupted half-way is run again
over the same stretch: handling must be idempotent.

A pass that has never run starts from the beginning of time (on a fresh database that finds nothing); the migration
that introduces a pass over existing data records its upgrade time instead.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import BigInteger, Column, DateTime, String, Table, or_, select, update
from sqlalchemy.orm import Session

from app import db
from app.logging import fields
from app.store import dates

log = logging.getLogger("qiao.clock")
LEASE_SECONDS = 600
SETTLE_SECONDS = 30
BATCH = 500

clock_pass = Table(
    "clock_pass",
    db.metadata,
    Column("name", String(64), primary_key=True),
    Column("done_until", BigInteger, nullable=False),  # microseconds since the epoch: everything up to it is handled
    Column("lease_until", DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True)
class Pass:
    name: str
    #: The keys of what fell due in (after, until], microseconds since the epoch.
    due: Callable[[Session, int, int], list[str]]
    #: Handle a batch of those keys (in a transaction of its own); how many things it changed.
    handle: Callable[[Session, list[str]], int]


def passes() -> list[Pass]:
    from app.cdc import registries
    from app.referrals import escalations

    return [Pass("registries", registries.due, registries.refresh), Pass("escalations", escalations.due, escalations.escalate)]


def run(only: list[Pass] | None = None) -> dict[str, int | None]:
    """Run every pass up to now: {pass: things changed, or None when it was not run (another process holds it, or
    write transactions older than now were still open after SETTLE_SECONDS)}."""
    return {p.name: run_pass(p) for p in (only if only is not None else passes())}


def run_pass(clock: Pass) -> int | None:
    now = dates.now()
    until = dates.micros(now)
    with db.transaction() as session:
        after = _claim(session, clock.name)
    if after is None:
        return None
    if not db.wait_for_writers(now, SETTLE_SECONDS):  # a write still open may have derived its state before `now`
        _release(clock.name, after)
        return None
    changed = 0
    try:
        with db.read_session() as session:
            keys = clock.due(session, after, until)
        for start in range(0, len(keys), BATCH):
            with db.transaction() as session:
                changed += clock.handle(session, keys[start:start + BATCH])
                _renew(session, clock.name)
    except BaseException:
        _release(clock.name, after)  # the next run is handed the same stretch again
        raise
    _release(clock.name, until)
    if keys:
        log.info("clock.pass_ran", extra=fields(clock_pass=clock.name, due=len(keys), changed=changed))
    return changed


def _claim(session: Session, name: str) -> int | None:
    """Take the pass's lease; the watermark it starts from, or None when another process holds a live lease."""
    now = dates.now()
    c = clock_pass.c
    db.insert_unless_present(session, clock_pass, {"name": name, "done_until": 0})
    lease = now + timedelta(seconds=LEASE_SECONDS)
    taken = session.connection().execute(update(clock_pass).where(
        c.name == name, or_(c.lease_until.is_(None), c.lease_until < now)).values(lease_until=lease)).rowcount
    if not taken:
        return None
    return int(session.execute(select(c.done_until).where(c.name == name)).scalar_one())


def _release(name: str, done_until: int) -> None:
    with db.transaction() as session:
        session.execute(update(clock_pass).where(clock_pass.c.name == name).values(done_until=done_until, lease_until=None))


def _renew(session: Session, name: str) -> None:
    session.execute(update(clock_pass).where(clock_pass.c.name == name).values(
        lease_until=dates.now() + timedelta(seconds=LEASE_SECONDS)))

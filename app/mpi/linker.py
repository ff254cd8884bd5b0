"""Online matching: every source Patient written (REST, transaction, adapter) is placed under a master resident in
the same transaction. Candidates come from blocking keys, are scored by the model, and the decision is one of:
join the master it certainly matches, or get a master of its own, with the doubtful pairs sent to review.

Serialised per blocking key (two records of one person share at least one key, so they never race each other
into two masters)."""

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.orm import Session

from app.auth.principal import Principal
from app.config import get_settings
from app.db import lock_key
from app.errors import Forbidden
from app.mpi import features as feature_reader
from app.mpi import golden
from app.mpi.features import Features
from app.mpi.model import CERTAIN, CERTAINLY_NOT, ID_DIFFERENT, PROBABLE, Levels, Model, compare, grade
from app.mpi.tables import mpi_block, mpi_distinct, mpi_link_event, mpi_record, mpi_review
from app.store import dates
from app.store.rules import WriteRule

MAX_CANDIDATES = 1000
MAX_REVIEWS_PER_RECORD = 5
#: a phone or a name shared by more residents than this is no blocking key (a clinic's number, 张伟)
BLOCK_LIMIT = 200


@lru_cache
def model() -> Model:
    settings = get_settings()
    loaded = Model.load(settings.mpi_model)
    if settings.mpi_link_threshold is not None:
        loaded.link = settings.mpi_link_threshold
    if settings.mpi_review_threshold is not None:
        loaded.review = settings.mpi_review_threshold
    return loaded


def blocking_keys(f: Features) -> list[str]:
    """Keys under which a record is found: exact ID number; either half of it with the surname (a typo spares one
    half); name sound with birth year; surname with birth date; each phone; insurance number."""
    keys = []
    if f.id_number:
        keys.append(f"id:{f.id_number}")
        if f.name and len(f.id_number) == 18:
            keys += [f"ih:{f.id_number[:9]}:{f.name.surname}", f"it:{f.id_number[9:]}:{f.name.surname}"]
    if f.name and f.birth_date:
        keys += [f"nb:{f.name.pinyin}:{f.birth_date[:4]}", f"sb:{f.name.surname}:{f.birth_date}"]
    keys += [f"ph:{p}" for p in f.phones]
    if f.insurance:
        keys.append(f"in:{f.insurance}")
    return keys


def frequency_keys(f: Features) -> list[str]:
    """Keys counted for term frequencies only (never searched as blocks)."""
    keys = []
    if f.name:
        keys.append(f"tp:{f.name.pinyin}")
        if f.name.chars:
            keys.append(f"tc:{f.name.chars}")
    return keys


@dataclass
class Candidate:
    patient_id: str
    master_id: str
    probability: float
    levels: Levels
    grade: str
    ruled_out: bool = False  # a different valid ID number, or a steward said "different": never this master


@dataclass
class Decision:
    """Where a record goes: `master_id` (None: a new master) and the masters to review it against."""

    master_id: str | None
    probability: float | None
    reviews: list[Candidate] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)


# --- scoring ---------------------------------------------------------------------------------------------------


def score(connection: Connection, f: Features, *, exclude: str | None = None) -> list[Candidate]:
    """Every candidate record sharing a blocking key, scored and graded; best first."""
    keys = blocking_keys(f)
    if not keys:
        return []
    numbered = (
        select(mpi_block.c.record_pk, func.row_number().over(partition_by=mpi_block.c.key).label("n"))
        .where(mpi_block.c.key.in_(keys))
        .subquery()
    )
    rows = connection.execute(
        select(mpi_record.c.patient_id, mpi_record.c.master_id, mpi_record.c.features)
        .where(mpi_record.c.pk.in_(select(numbered.c.record_pk).where(numbered.c.n <= BLOCK_LIMIT)))
        .limit(MAX_CANDIDATES)
    ).all()
    rows = [row for row in rows if row.patient_id != exclude]
    if not rows:
        return []
    shares = _shares(connection, f)
    distinct = _distinct_from(connection, exclude, [row.patient_id for row in rows]) if exclude else set()
    current = model()
    candidates = []
    for row in rows:
        other = Features.from_json(orjson.loads(row.features))
        levels = compare(f, other)
        probability = current.probability(current.weight(levels, lambda c, lv: _share(shares, f, c, lv)))
        ruled_out = row.patient_id in distinct or levels.get("id_number") == ID_DIFFERENT
        graded = CERTAINLY_NOT if ruled_out else grade(current, levels, probability)
        candidates.append(Candidate(row.patient_id, row.master_id, probability, levels, graded, ruled_out))
    return sorted(candidates, key=lambda c: -c.probability)


def _shares(connection: Connection, f: Features) -> dict[str, float]:
    """Each agreeing value's share of the residents (distinct masters), for term-frequency adjustment."""
    keys = frequency_keys(f) + [f"ph:{p}" for p in f.phones]
    if not keys:
        return {}
    counts = connection.execute(
        select(mpi_block.c.key, func.count(func.distinct(mpi_record.c.master_id)))
        .join(mpi_record, mpi_record.c.pk == mpi_block.c.record_pk)
        .where(mpi_block.c.key.in_(keys))
        .group_by(mpi_block.c.key)
    ).all()
    population = max(_population(connection), get_settings().mpi_min_population)
    return {key: max(count, 1) / population for key, count in counts}


def _share(shares: dict[str, float], f: Features, comparison: str, level: int) -> float | None:
    if comparison == "name" and f.name and level in (0, 1):
        key = f"tc:{f.name.chars}" if level == 0 and f.name.chars else f"tp:{f.name.pinyin}"
        return shares.get(key)
    if comparison == "phone" and level == 0:
        found = [shares[f"ph:{p}"] for p in f.phones if f"ph:{p}" in shares]
        return min(found) if found else None
    return None


_population_cache: dict[str, tuple[float, int]] = {}


def _population(connection: Connection) -> int:
    """The number of residents (masters), recounted at most once a minute per database."""
    url = str(connection.engine.url)
    counted_at, count = _population_cache.get(url, (0.0, 0))
    if time.monotonic() - counted_at > 60:
        count = int(connection.scalar(select(func.count(func.distinct(mpi_record.c.master_id)))) or 0)
        _population_cache[url] = (time.monotonic(), count)
    return count


def _distinct_from(connection: Connection, patient_id: str, others: list[str]) -> set[str]:
    rows = connection.execute(
        select(mpi_distinct.c.patient_a, mpi_distinct.c.patient_b).where(
            ((mpi_distinct.c.patient_a == patient_id) & mpi_distinct.c.patient_b.in_(others))
            | ((mpi_distinct.c.patient_b == patient_id) & mpi_distinct.c.patient_a.in_(others))
        )
    ).all()
    return {b if a == patient_id else a for a, b in rows}


def decide(candidates: Sequence[Candidate]) -> Decision:
    """Per master, its best record speaks for it, but one certainly-not (a different valid ID number, a steward's
    "different") rules the master out. One certain or probable master: join it. Otherwise a master of its own,
    with every possible master (and any other probable one) sent to review."""
    masters: dict[str, Candidate] = {}
    ruled_out: set[str] = set()
    for candidate in candidates:
        if candidate.ruled_out:
            ruled_out.add(candidate.master_id)
        best = masters.get(candidate.master_id)
        if best is None or candidate.probability > best.probability:
            masters[candidate.master_id] = candidate
    ranked = sorted((c for m, c in masters.items() if m not in ruled_out and c.grade != CERTAINLY_NOT), key=lambda c: -c.probability)
    linkable = [c for c in ranked if c.grade in (CERTAIN, PROBABLE)]
    target = linkable[0] if linkable else None
    reviews = [c for c in ranked if c is not target][:MAX_REVIEWS_PER_RECORD]
    return Decision(target.master_id if target else None, target.probability if target else None, reviews, list(candidates))


# --- placing records -------------------------------------------------------------------------------------------


def guard(session: Session, write: Any, _principal: Principal) -> None:
    """Masters are the index's own: no client writes one, or changes or deletes an existing one."""
    content, resource_id = write.content, write.resource_id
    if content is not None and golden.is_master(content):
        raise Forbidden("master residents (tag urn:qiao:mpi|master) are kept by the master patient index", expression=["Patient.meta.tag"])
    if is_master(session.connection(), resource_id):
        raise Forbidden(f"Patient/{resource_id} is a master resident kept by the master patient index; change its sources",
                        expression=["Patient"])


def is_master(connection: Connection, patient_id: str) -> bool:
    return connection.scalar(select(mpi_record.c.pk).where(mpi_record.c.master_id == patient_id).limit(1)) is not None


def place_written(session: Session, written: Sequence[Any], principal: Principal) -> None:
    """Place every source Patient among `written` (repository.Stored), and refresh the masters that changed."""
    actor = principal.client_id
    touched: set[str] = set()
    for stored in written:
        content = orjson.loads(stored.content) if stored.content else None
        if content is not None and golden.is_master(content):
            continue
        if content is None:
            touched |= withdraw(session, stored.resource_id)
        else:
            touched |= place(session, stored.resource_id, content, stored.org, actor)
    golden.refresh(session, touched)


def place(session: Session, patient_id: str, content: dict[str, Any], org: str | None, actor: str) -> set[str]:
    """Match a source record and file it under a master; the masters whose membership or content changed."""
    f = feature_reader.of_patient(content)
    keys = blocking_keys(f)
    for key in sorted(set(keys)):
        lock_key(session, f"mpi:{key}")
    connection = session.connection()
    existing = connection.execute(select(mpi_record).where(mpi_record.c.patient_id == patient_id)).first()
    decision = decide(score(connection, f, exclude=patient_id))
    now = dates.now()
    if existing is None:
        master_id = decision.master_id or golden.new_master_id()
        basis = "match" if decision.master_id else "new"
        pk = connection.execute(
            insert(mpi_record).returning(mpi_record.c.pk),
            {"patient_id": patient_id, "master_id": master_id, "org": org, "features": _json(f), "basis": basis,
             "probability": decision.probability, "updated_at": now},
        ).scalar_one()
        _event(connection, now, patient_id, master_id, None, basis, decision.probability, actor)
        touched = {master_id}
    else:
        pk = existing.pk
        master_id = _master_after_update(connection, existing, decision)
        connection.execute(
            update(mpi_record).where(mpi_record.c.pk == pk).values(
                master_id=master_id, features=_json(f), updated_at=now,
                **({"basis": "match" if decision.master_id == master_id else "new", "probability": decision.probability}
                   if master_id != existing.master_id else {}),
            )
        )
        if master_id != existing.master_id:
            _event(connection, now, patient_id, master_id, existing.master_id, "match" if decision.master_id else "new",
                   decision.probability, actor, note="the record changed")
        connection.execute(delete(mpi_block).where(mpi_block.c.record_pk == pk))
        touched = {master_id, existing.master_id}
    stored_keys = sorted(set(keys + frequency_keys(f)))
    if stored_keys:
        connection.execute(insert(mpi_block), [{"key": key, "record_pk": pk} for key in stored_keys])
    _queue_reviews(connection, now, patient_id, [c for c in decision.reviews if c.master_id != master_id])
    return touched


def _master_after_update(connection: Connection, existing: Any, decision: Decision) -> str:
    """A steward's placement stands; otherwise a record keeps its master while it still matches it (or is alone in
    it), and moves when it now certainly matches another or no longer matches its own."""
    current: str = existing.master_id
    if existing.basis == "steward" or decision.master_id == current:
        return current
    if decision.master_id is not None:
        return decision.master_id
    alone = connection.scalar(select(func.count()).where(mpi_record.c.master_id == current)) == 1
    return current if alone else golden.new_master_id()


def merge_masters(session: Session, source: str, target: str, *, actor: str, note: str | None = None) -> None:
    """Move every record of master `source` into master `target` (a steward's decision, or a HIS merge message).
    Each move is a link event, so an unmerge can put them back."""
    connection = session.connection()
    now = dates.now()
    moved = connection.scalars(select(mpi_record.c.patient_id).where(mpi_record.c.master_id == source)).all()
    connection.execute(update(mpi_record).where(mpi_record.c.master_id == source).values(master_id=target, basis="steward", updated_at=now))
    for patient_id in moved:
        _event(connection, now, patient_id, target, source, "steward", None, actor, note)


def withdraw(session: Session, patient_id: str) -> set[str]:
    """A deleted source record leaves the index; its master is refreshed (or retired, if it was the last)."""
    connection = session.connection()
    row = connection.execute(select(mpi_record.c.pk, mpi_record.c.master_id).where(mpi_record.c.patient_id == patient_id)).first()
    if row is None:
        return set()
    connection.execute(delete(mpi_block).where(mpi_block.c.record_pk == row.pk))
    connection.execute(delete(mpi_record).where(mpi_record.c.pk == row.pk))
    connection.execute(update(mpi_review).where(mpi_review.c.patient_id == patient_id, mpi_review.c.status == "open")
                       .values(status="obsolete"))
    return {row.master_id}


def _queue_reviews(connection: Connection, now: datetime, patient_id: str, candidates: Sequence[Candidate]) -> None:
    if not candidates:
        return
    open_for = set(connection.scalars(
        select(mpi_review.c.master_id).where(mpi_review.c.patient_id == patient_id, mpi_review.c.status == "open")
    ))
    rows = [
        {"patient_id": patient_id, "master_id": c.master_id, "probability": c.probability,
         "levels": orjson.dumps(model().explain(c.levels)).decode(), "status": "open", "created_at": now}
        for c in candidates if c.master_id not in open_for
    ]
    if rows:
        connection.execute(insert(mpi_review), rows)


def _event(connection: Connection, now: datetime, patient_id: str, master_id: str, previous: str | None, basis: str,
           probability: float | None, actor: str, note: str | None = None) -> None:
    connection.execute(insert(mpi_link_event).values(
        at=now, patient_id=patient_id, master_id=master_id, previous_master_id=previous, basis=basis,
        probability=probability, actor=actor, note=note,
    ))


def _json(f: Features) -> str:
    return orjson.dumps(f.to_json()).decode()


RULE = WriteRule(frozenset({"Patient"}), check=guard, after=place_written)

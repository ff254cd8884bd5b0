"""Online matching: every source Patient written (REST, transaction, adapter) is placed under a master resident in
the same transaction. Candidates come from blocking keys, are scored by the model, and the decision is one of:
join the master it certainly matches, or get a master of its own, with the doubtful pairs sent to review.

Serialised per blocking key (two records of one person share at least one key, so they never race each other
into two masters)."""

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache, partial
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, bindparam, delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.auth.principal import Principal
from app.config import get_settings
from app.db import among, bulk_insert, lock_keys
from app.errors import Conflict, Forbidden, NotFound
from app.logging import fields
from app.mpi import features as feature_reader
from app.mpi import golden, names, rebuild_lock
from app.mpi.features import Features
from app.mpi.model import CERTAIN, CERTAINLY_NOT, ID_DIFFERENT, PROBABLE, Levels, Model, compare, conflicts, grade, two_people
from app.mpi.tables import mpi_block, mpi_census, mpi_common, mpi_distinct, mpi_link_event, mpi_record, mpi_review
from app.store import dates
from app.store.rules import WriteRule

log = logging.getLogger("qiao.mpi")
MAX_CANDIDATES = 1000
MAX_REVIEWS_PER_RECORD = 5
#: a phone or a name shared by more records than this is no blocking key (a clinic's number, 张伟). At 1M generated
#: residents 50 in place of 200 took the candidate pools' p99 from 130 to 82 records, and the pairs of one person's
#: records with no key in common from 520 to 531 of 810,250 (such a pair can still meet through a third record)
BLOCK_LIMIT = 50
#: term frequencies are counted over at most this many records per value: the cost of a write stays bounded, and a
#: value this common is weak evidence whatever its exact count
SHARE_SAMPLE = 2000


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
    """Keys under which a record is found: exact ID number; either half of it (a typo spares one half), the first
    with the name, the second with the surname; name sound with birth year; surname with birth date; name sound with
    dwelling (when a birth date is missing); each phone; insurance number. Names by their sound (names.sound), as
    they are compared. The first half is region and birth decade: with the surname alone its blocks held 86 records
    at the median at 1M residents (most of a $match's candidates), with the name 3."""
    keys = []
    surname = names.sound(f.name.surname) if f.name else ""
    if f.id_number:
        keys.append(f"id:{f.id_number}")
        if f.name and len(f.id_number) == 18:
            keys += [f"ih:{f.id_number[:9]}:{f.name.sound}", f"it:{f.id_number[9:]}:{surname}"]
    if f.name and f.birth_date:
        keys += [f"nb:{f.name.sound}:{f.birth_date[:4]}", f"sb:{surname}:{f.birth_date}"]
    if f.name and f.dwelling:
        keys.append(f"nd:{f.name.sound}:{f.dwelling}")
    keys += [f"ph:{p}" for p in f.phones]
    if f.insurance:
        keys.append(f"in:{f.insurance}")
    return keys


def frequency_keys(f: Features) -> list[str]:
    """Keys whose records are counted for term frequencies: the name's sound and characters (never searched as
    blocks) and each phone (a blocking key too)."""
    keys = []
    if f.name:
        keys.append(f"tp:{f.name.sound}")
        if f.name.chars:
            keys.append(f"tc:{f.name.chars}")
    return keys + [f"ph:{p}" for p in f.phones]


@dataclass
class Candidate:
    patient_id: str
    master_id: str
    probability: float
    levels: Levels
    grade: str
    ruled_out: bool = False  # a different valid ID number, or a steward said "different": never this master
    conflict: bool = False  # disagrees on birth date or sex: this master is not joined without a steward


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
    return Pool.read(connection, [f], [exclude] if exclude else []).score(f, exclude=exclude)


@dataclass
class Pool:
    """The indexed records a batch of records is matched against, read in a few queries for the whole batch and
    overlaid with the batch's own placements, so that two records of one person in one batch find each other."""

    blocks: dict[str, list[str]]  # blocking key → patient ids (a key read over BLOCK_LIMIT is left out)
    records: dict[str, tuple[str, Features]]  # patient id → (master id, features)
    shares: dict[str, float]
    distinct: set[tuple[str, str]]  # pairs a steward declared different, smaller id first
    population: int  # residents (masters) in the index, at least QIAO_MPI_MIN_POPULATION
    closed: frozenset[str] = frozenset()  # keys too common to search (a batch rebuild knows them in advance)
    members: dict[str, set[str]] = field(default_factory=dict)  # master id → its records the pool holds

    def __post_init__(self) -> None:
        for patient_id, (master_id, _) in self.records.items():
            self.members.setdefault(master_id, set()).add(patient_id)

    @classmethod
    def read(cls, connection: Connection, batch: Sequence[Features], ids: Sequence[str]) -> "Pool":
        keys = sorted({key for f in batch for key in blocking_keys(f)})
        rows = _candidate_rows(connection, keys) if keys else []
        blocks: dict[str, list[str]] = {}
        for row in sorted(rows, key=lambda row: row[0]):  # each block in record order
            for key in row[4] or ():
                blocks.setdefault(key, []).append(row[1])
        records = {patient_id: (master_id, Features.from_json(orjson.loads(features)))
                   for _, patient_id, master_id, features, _ in rows}
        distinct = _distinct(connection, list(ids), list(records)) if ids and records else set()
        population = max(_census(connection).residents, get_settings().mpi_min_population)
        return cls(blocks, records, _shares(connection, batch, population), distinct, population)

    def score(self, f: Features, *, exclude: str | None = None) -> list[Candidate]:
        """The records sharing a blocking key, scored; and any other record of their masters that rules its master
        out (a different valid ID number, a steward's "different") or disagrees on birth date or sex, so that a
        record matching one of a master's records never joins a master holding another person: records are not
        linked by a chain of matches."""
        ids = list(dict.fromkeys(pid for key in blocking_keys(f) for pid in self.blocks.get(key, ()) if pid != exclude))[:MAX_CANDIDATES]
        candidates = [self._candidate(f, patient_id, exclude) for patient_id in ids]
        scored = set(ids)
        for master_id in {c.master_id for c in candidates}:
            for patient_id in self.members.get(master_id, ()):
                if patient_id in scored or patient_id == exclude:
                    continue
                if self._rules_out(f, patient_id, exclude) or conflicts(f, self.records[patient_id][1]):
                    candidates.append(self._candidate(f, patient_id, exclude))
        return sorted(candidates, key=lambda c: -c.probability)

    def _candidate(self, f: Features, patient_id: str, exclude: str | None) -> Candidate:
        master_id, other = self.records[patient_id]
        if self._rules_out(f, patient_id, exclude):
            # two people whatever else agrees: nothing to weigh (most candidates a common name brings, at 1M records)
            return Candidate(patient_id, master_id, 0.0, {"id_number": ID_DIFFERENT} if two_people(f, other) else {},
                             CERTAINLY_NOT, ruled_out=True)
        current = model()
        levels = compare(f, other)
        weight = current.weight(levels, partial(_share, self.shares, f))
        probability = current.probability(weight)
        namesake = current.probability(current.reweigh(weight, 1 / self.population))
        return Candidate(patient_id, master_id, probability, levels, grade(current, levels, probability, namesake),
                         conflict=conflicts(f, other))

    def _rules_out(self, f: Features, patient_id: str, exclude: str | None) -> bool:
        other = self.records[patient_id][1]
        return ((exclude is not None and _pair(exclude, patient_id) in self.distinct)
                or two_people(f, other))

    def add(self, patient_id: str, master_id: str, f: Features) -> None:
        """A record placed in this batch: the next ones are matched against it too."""
        before = self.records.get(patient_id)
        if before is not None and before[0] != master_id:
            self.members[before[0]].discard(patient_id)
        self.records[patient_id] = (master_id, f)
        self.members.setdefault(master_id, set()).add(patient_id)
        for key in blocking_keys(f):
            if key in self.closed:
                continue
            found = self.blocks.setdefault(key, [])
            if patient_id not in found:
                found.append(patient_id)


#: The candidates of a record, in one statement on PostgreSQL: the first BLOCK_LIMIT + 1 records under each blocking
#: key (a LATERAL join reads at most that many index entries per key, whatever the key's size), a key holding more
#: left out, and every record of the masters of those left: a master is only joined when all of it may be. Each row
#: names the keys it was found under (none: another record of a candidate's master). "pk IN … OR master_id IN …"
#: had PostgreSQL scan the whole index table. A constant text, prepared once per connection: built in SQLAlchemy per
#: call, the statements of a $match cost more Python than PostgreSQL time at 1M records.
_CANDIDATES = text("""
    WITH under AS MATERIALIZED (
        SELECT wanted.key, found.record_pk FROM unnest(CAST(:keys AS text[])) AS wanted(key)
        CROSS JOIN LATERAL (SELECT record_pk FROM mpi_block WHERE mpi_block.key = wanted.key LIMIT :over) AS found
    ), kept AS (
        SELECT record_pk, array_agg(key) AS keys FROM under
        WHERE key IN (SELECT key FROM under GROUP BY key HAVING count(*) < :over)
        GROUP BY record_pk
    )
    SELECT record.pk, record.patient_id, record.master_id, record.features, kept.keys
    FROM mpi_record AS record LEFT JOIN kept ON kept.record_pk = record.pk
    WHERE record.master_id IN (SELECT candidate.master_id FROM mpi_record AS candidate JOIN kept ON kept.record_pk = candidate.pk)
""")


def _candidate_rows(connection: Connection, keys: list[str]) -> list[tuple[int, str, str, str, list[str] | None]]:
    """(pk, patient id, master id, features, the blocking keys it was found under) of every candidate record and of
    every other record of their masters."""
    if connection.dialect.name == "postgresql":
        return [(pk, patient_id, master_id, features, found_under) for pk, patient_id, master_id, features, found_under
                in connection.execute(_CANDIDATES, {"keys": keys, "over": BLOCK_LIMIT + 1})]
    # SQLite (the small embedded store): each key's rows numbered, then the masters' records
    numbered = (select(mpi_block.c.key, mpi_block.c.record_pk, func.row_number().over(partition_by=mpi_block.c.key).label("n"))
                .where(mpi_block.c.key.in_(keys)).subquery())
    under: dict[str, list[int]] = {}
    for key, record_pk in connection.execute(select(numbered.c.key, numbered.c.record_pk).where(numbered.c.n <= BLOCK_LIMIT + 1)):
        under.setdefault(key, []).append(record_pk)
    found_under: dict[int, list[str]] = {}
    for key, pks in under.items():
        if len(pks) <= BLOCK_LIMIT:
            for pk in pks:
                found_under.setdefault(pk, []).append(key)
    if not found_under:
        return []
    their_masters = select(mpi_record.c.master_id).where(mpi_record.c.pk.in_(found_under)).scalar_subquery()
    rows = connection.execute(select(mpi_record.c.pk, mpi_record.c.patient_id, mpi_record.c.master_id, mpi_record.c.features)
                              .where(mpi_record.c.master_id.in_(their_masters)))
    return [(pk, patient_id, master_id, features, found_under.get(pk)) for pk, patient_id, master_id, features in rows]


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


#: a value under at least this many records is not counted resident by resident: its records are counted (an
#: index-only scan) and divided by the index's records per resident, and the result kept for COMMON_FOR seconds.
#: Counting 王艳's 2,000 records' distinct masters took 35-80 ms of a write at 1M records; so common a value's share
#: moves slowly, and a share is an estimate in any case (SHARE_SAMPLE)
COMMON, COMMON_FOR = 100, 600.0
#: `qiao mpi rebuild` keeps its count of every common value (mpi_common); online matching starts from those counts,
#: for this many days, instead of counting again in every process (the first look-ups of a fresh server were the
#: slowest $match calls at 1M)
COMMON_KEPT_DAYS = 7
_common: dict[tuple[str, str], tuple[float, float]] = {}  # (database, key) → (counted at, residents)


def _shares(connection: Connection, batch: Sequence[Features], population: int) -> dict[str, float]:
    """Each value's share of the residents (distinct masters), for term-frequency adjustment."""
    keys = sorted({key for f in batch for key in frequency_keys(f)})
    if not keys:
        return {}
    url, now = str(connection.engine.url), time.monotonic()
    residents = {key: found[1] for key in keys if (found := _common.get((url, key))) and now - found[0] < COMMON_FOR}
    census = _census(connection)
    residents.update({key: census.common[key] / census.records_per_resident for key in keys
                      if key not in residents and key in census.common})
    missing = [key for key in keys if key not in residents]
    if missing:
        if len(_common) > 100_000:
            _common.clear()
        for key, (records, distinct_masters) in _value_counts(connection, missing).items():
            if distinct_masters is not None:
                residents[key] = distinct_masters
            else:
                residents[key] = records / census.records_per_resident
                _common[(url, key)] = (now, residents[key])
    return {key: max(count, 1) / population for key, count in residents.items()}


#: Per value: its records (up to SHARE_SAMPLE) and, for a value under fewer than COMMON records, its residents
#: (distinct masters); one statement on PostgreSQL (the residents are only counted where CASE needs them).
_VALUE_COUNTS = text("""
    SELECT wanted.key, counted.records,
           CASE WHEN counted.records < :common THEN (
               SELECT count(DISTINCT record.master_id) FROM mpi_block JOIN mpi_record AS record ON record.pk = mpi_block.record_pk
               WHERE mpi_block.key = wanted.key) END
    FROM unnest(CAST(:keys AS text[])) AS wanted(key)
    CROSS JOIN LATERAL (SELECT count(*) AS records FROM (SELECT 1 FROM mpi_block WHERE mpi_block.key = wanted.key LIMIT :sample) AS sample) AS counted
    WHERE counted.records > 0
""")


def _value_counts(connection: Connection, keys: list[str]) -> dict[str, tuple[int, int | None]]:
    """key → (records, residents or None when the value is common) for every key with a record."""
    if connection.dialect.name == "postgresql":
        return {key: (records, residents) for key, records, residents
                in connection.execute(_VALUE_COUNTS, {"keys": keys, "common": COMMON, "sample": SHARE_SAMPLE})}
    records = dict(connection.execute(select(mpi_block.c.key, func.count()).where(mpi_block.c.key.in_(keys))
                                      .group_by(mpi_block.c.key)).tuples().all())
    rare = [key for key, count in records.items() if count < COMMON]
    residents = dict(connection.execute(
        select(mpi_block.c.key, func.count(func.distinct(mpi_record.c.master_id)))
        .join(mpi_record, mpi_record.c.pk == mpi_block.c.record_pk).where(mpi_block.c.key.in_(rare))
        .group_by(mpi_block.c.key)).tuples().all()) if rare else {}
    return {key: (min(count, SHARE_SAMPLE), residents.get(key)) for key, count in records.items()}


def _share(shares: dict[str, float], f: Features, comparison: str, level: int) -> float | None:
    if comparison == "name" and f.name and level in (0, 1):
        key = f"tc:{f.name.chars}" if level == 0 and f.name.chars else f"tp:{f.name.sound}"
        return shares.get(key)
    if comparison == "phone" and level == 0:
        found = [shares[f"ph:{p}"] for p in f.phones if f"ph:{p}" in shares]
        return min(found) if found else None
    return None


@dataclass(frozen=True)
class Census:
    residents: int  # masters
    records: int
    common: dict[str, int] = field(default_factory=dict)  # records under each common value, as the last rebuild counted

    @property
    def records_per_resident(self) -> float:
        return self.records / self.residents if self.residents else 1.0


_censuses: dict[str, tuple[float, Census]] = {}
_recounting: set[str] = set()
#: A census another process counted (and kept in mpi_census) within this many seconds is where a fresh process
#: starts, recounting beside its writes at once: counting the index took 0.8-2.2 s of a fresh server's first
#: Patient write at 1M residents, and grows with the index.
CENSUS_KEPT = 600.0


def _census(connection: Connection) -> Census:
    """The index's residents and records, recounted at most once a minute per database. On PostgreSQL the recount
    runs beside the writes, which go on with the last count meanwhile: it reads the whole index (1.2 s at 1M)."""
    url, postgres = str(connection.engine.url), connection.dialect.name == "postgresql"
    if url not in _censuses:
        kept = _kept_census(connection) if postgres else None
        _censuses[url] = (time.monotonic() - kept[0], kept[1]) if kept else (time.monotonic(), _count(connection))
    counted_at, census = _censuses[url]
    if time.monotonic() - counted_at > 60:
        if not postgres:
            census = _count(connection)
            _censuses[url] = (time.monotonic(), census)
        elif url not in _recounting:
            _recounting.add(url)
            threading.Thread(target=_recount, args=(connection.engine, url), name="qiao-mpi-census", daemon=True).start()
    return census


def _recount(engine: Engine, url: str) -> None:
    """Count beside the writes, and keep the count for the next fresh process (PostgreSQL)."""
    try:
        with engine.begin() as connection:
            census = _count(connection)
            keep_census(connection, census)
        _censuses[url] = (time.monotonic(), census)
    except Exception as error:  # noqa: BLE001 - the last count stands; the next write tries again
        log.warning("mpi.census_failed", extra=fields(error=type(error).__name__))
    finally:
        _recounting.discard(url)


def keep_census(connection: Connection, census: Census) -> None:
    """The count kept for the next fresh process (a recount beside the writes, or a rebuild, which knows it)."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    kept = {"residents": census.residents, "records": census.records, "counted_at": dates.now()}
    connection.execute(dialect.insert(mpi_census).values(id=1, **kept).on_conflict_do_update(index_elements=[mpi_census.c.id], set_=kept))


def _kept_census(connection: Connection) -> tuple[float, Census] | None:
    """The kept census and its age in seconds, when it is recent: a process recounts once it is a minute old, so
    a server started just after a rebuild does not read the whole index beside its first requests."""
    now = dates.now()
    kept = connection.execute(select(mpi_census).where(mpi_census.c.counted_at >= now - timedelta(seconds=CENSUS_KEPT))).first()
    if kept is None:
        return None
    return (now - dates.aware(kept.counted_at)).total_seconds(), Census(kept.residents, kept.records, _common_counts(connection))


def _count(connection: Connection) -> Census:
    residents, records = connection.execute(select(func.count(func.distinct(mpi_record.c.master_id)), func.count())
                                            .select_from(mpi_record)).one()
    return Census(int(residents or 0), int(records or 0), _common_counts(connection))


def _common_counts(connection: Connection) -> dict[str, int]:
    since = dates.now() - timedelta(days=COMMON_KEPT_DAYS)
    return dict(connection.execute(select(mpi_common.c.key, mpi_common.c.records).where(mpi_common.c.counted_at >= since)).tuples().all())


def _distinct(connection: Connection, ids: list[str], others: list[str]) -> set[tuple[str, str]]:
    rows = connection.execute(
        select(mpi_distinct.c.patient_a, mpi_distinct.c.patient_b).where(
            (among(connection, mpi_distinct.c.patient_a, ids) & among(connection, mpi_distinct.c.patient_b, others))
            | (among(connection, mpi_distinct.c.patient_b, ids) & among(connection, mpi_distinct.c.patient_a, others))
        )
    ).all()
    return {_pair(a, b) for a, b in rows}


def decide(candidates: Sequence[Candidate]) -> Decision:
    """Per master, its best record speaks for it, but one certainly-not (a different valid ID number, a steward's
    "different") rules the master out, and one that disagrees on birth date or sex makes it doubtful at best. One
    certain or probable master: join it. Otherwise a master of its own, with every possible or doubtful master (and
    any other probable one) sent to review."""
    masters: dict[str, Candidate] = {}
    ruled_out: set[str] = set()
    doubtful: set[str] = set()
    for candidate in candidates:
        if candidate.ruled_out:
            ruled_out.add(candidate.master_id)
        if candidate.conflict:
            doubtful.add(candidate.master_id)
        best = masters.get(candidate.master_id)
        if best is None or candidate.probability > best.probability:
            masters[candidate.master_id] = candidate
    ranked = sorted((c for m, c in masters.items() if m not in ruled_out and c.grade != CERTAINLY_NOT), key=lambda c: -c.probability)
    linkable = [c for c in ranked if c.grade in (CERTAIN, PROBABLE) and c.master_id not in doubtful]
    target = linkable[0] if linkable else None
    reviews = [c for c in ranked if c is not target][:MAX_REVIEWS_PER_RECORD]
    return Decision(target.master_id if target else None, target.probability if target else None, reviews, list(candidates))


# --- placing records -------------------------------------------------------------------------------------------


def guard(session: Session, write: Any, _principal: Principal) -> None:
    """Masters are the index's own: no client writes one, or changes or deletes an existing one."""
    content, resource_id = write.content, write.resource_id
    if content is not None and golden.is_master(content):
        raise Forbidden("master residents (tag urn:qiao:mpi|master) are kept by the master patient index", expression=["Patient.meta.tag"])
    if write.current is not None and is_master(session.connection(), resource_id):
        raise Forbidden(f"Patient/{resource_id} is a master resident kept by the master patient index; change its sources",
                        expression=["Patient"])


def is_master(connection: Connection, patient_id: str) -> bool:
    return connection.scalar(select(mpi_record.c.pk).where(mpi_record.c.master_id == patient_id).limit(1)) is not None


def place_written(session: Session, written: Sequence[Any], principal: Principal) -> None:
    """Place every source Patient among `written` (repository.Stored), and refresh the masters that changed; while
    a rebuild runs, note them for it instead (app/mpi/rebuild_lock.py)."""
    contents = [(stored, stored.parsed()) for stored in written]
    sources = [(stored.resource_id, stored.org, content) for stored, content in contents if content is None or not golden.is_master(content)]
    if not sources:
        return
    if not rebuild_lock.may_place(session):
        rebuild_lock.defer(session, [patient_id for patient_id, _, _ in sources])
        return
    place_sources(session, sources, principal.client_id)


def place_sources(session: Session, sources: Sequence[tuple[str, str | None, dict[str, Any] | None]], actor: str) -> None:
    """Place source records (id, institution, content; None: deleted): a deleted one leaves its master, the others
    are matched, an institution's merge is followed; then the masters that changed are rewritten."""
    # matching deferred (an initial load): nothing is placed until `qiao mpi rebuild`; a deleted record still leaves
    placing = [(patient_id, org, feature_reader.of_patient(content)) for patient_id, org, content in sources
               if content is not None and get_settings().mpi_online]
    # every blocking key of the whole write, locked at once in one order: two batches of overlapping residents
    # wait for each other instead of deadlocking
    lock_keys(session, [f"mpi:{key}" for _, _, f in placing for key in blocking_keys(f)])
    touched: set[str] = set()
    for patient_id, _, content in sources:
        if content is None:
            touched |= withdraw(session, patient_id)
    touched |= place(session, placing, actor)
    replacements = [(patient_id, target) for patient_id, _, content in sources if content and (target := replaced_by(content))]
    joined, retired = follow_replacements(session, replacements, actor)
    golden.refresh(session, touched | joined, replaced_by=retired)


def replaced_by(content: dict[str, Any]) -> str | None:
    """The Patient a source record says it was merged into (`link` of type replaced-by: a HIS merge, ADT^A40)."""
    for link in content.get("link") or []:
        reference = str((link.get("other") or {}).get("reference") or "")
        if link.get("type") == "replaced-by" and reference.startswith("Patient/"):
            return reference.removeprefix("Patient/")
    return None


def follow_replacements(session: Session, replacements: Sequence[tuple[str, str]], actor: str) -> tuple[set[str], dict[str, str]]:
    """An institution merged two of its records: their masters become one (basis merge-message), unless that would
    join two people (different valid ID numbers, or a steward's "different"); then a steward reviews it instead.
    Returns the masters changed and those retired into another."""
    connection = session.connection()
    touched: set[str] = set()
    retired: dict[str, str] = {}
    for old, new in replacements:
        masters = {row.patient_id: row.master_id for row in connection.execute(
            select(mpi_record.c.patient_id, mpi_record.c.master_id).where(mpi_record.c.patient_id.in_([old, new])))}
        if old not in masters or new not in masters or masters[old] == masters[new]:
            continue
        note = f"Patient/{old} says it was replaced by Patient/{new}"
        conflict = joining_conflict(connection, masters[old], masters[new], steward=False)
        if conflict:
            queue_reviews(connection, dates.now(), {old: [_candidate(connection, old, new, masters[new])]}, note=f"{note}, but {conflict}")
            continue
        merge_masters(session, masters[old], masters[new], actor=actor, note=note, basis="merge-message")
        touched |= {masters[old], masters[new]}
        retired[masters[old]] = masters[new]
    return touched, retired


def joining_conflict(connection: Connection, master_a: str, master_b: str, *, steward: bool) -> str | None:
    """Why two masters must not become one: two of their records carry different valid ID numbers (two people,
    whatever else agrees), or, unless a steward decides it again, a steward declared two of them different."""
    rows = connection.execute(select(mpi_record.c.patient_id, mpi_record.c.master_id, mpi_record.c.features)
                              .where(mpi_record.c.master_id.in_([master_a, master_b]))).all()
    parsed = [(row.patient_id, row.master_id, Features.from_json(orjson.loads(row.features))) for row in rows]
    side_a = [(pid, f) for pid, master, f in parsed if master == master_a]
    side_b = [(pid, f) for pid, master, f in parsed if master == master_b]
    for a, fa in side_a:
        for b, fb in side_b:
            if two_people(fa, fb):
                return f"Patient/{a} and Patient/{b} carry different valid ID numbers"
    if not steward:
        declared = _distinct(connection, [pid for pid, _ in side_a], [pid for pid, _ in side_b])
        if declared:
            a, b = sorted(declared)[0]
            return f"a data steward declared Patient/{a} and Patient/{b} different"
    return None


def _candidate(connection: Connection, patient_id: str, other_id: str, master_id: str) -> Candidate:
    """The pair as the model sees it (without term frequencies), for a review queued by something else than a match."""
    found = {row.patient_id: Features.from_json(orjson.loads(row.features)) for row in connection.execute(
        select(mpi_record.c.patient_id, mpi_record.c.features).where(mpi_record.c.patient_id.in_([patient_id, other_id])))}
    levels = compare(found[patient_id], found[other_id])
    current = model()
    probability = current.probability(current.weight(levels, lambda _comparison, _level: None))
    return Candidate(other_id, master_id, probability, levels, grade(current, levels, probability, probability))


@dataclass
class _Placement:
    """What placing a batch writes, gathered so that it is written in a few statements."""

    new: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    keys: dict[str, list[str]] = field(default_factory=dict)  # patient id → its blocking and frequency keys
    events: list[dict[str, Any]] = field(default_factory=list)
    reviews: dict[str, list[Candidate]] = field(default_factory=dict)
    joined: Counter[str] = field(default_factory=Counter)  # records each master gained (+) or lost (−) in the batch


def place(session: Session, placing: Sequence[tuple[str, str | None, Features]], actor: str) -> set[str]:
    """Match source records (id, institution, features) and file each under a master; the masters whose membership
    or content changed. The caller holds the locks of the records' blocking keys. Each record is matched against
    the index and the batch's records before it."""
    if not placing:
        return set()
    connection = session.connection()
    ids = [patient_id for patient_id, _, _ in placing]
    existing = {row.patient_id: row for row in connection.execute(select(mpi_record).where(among(connection, mpi_record.c.patient_id, ids)))}
    pool = Pool.read(connection, [f for _, _, f in placing], ids)
    now = dates.now()
    out = _Placement()
    touched: set[str] = set()
    for patient_id, org, f in placing:
        decision = decide(pool.score(f, exclude=patient_id))
        basis = "match" if decision.master_id else "new"
        row = {"features": _json(f), "updated_at": now, "probability": decision.probability, "basis": basis}
        before = existing.get(patient_id)
        if before is None:
            master_id = decision.master_id or golden.new_master_id()
            out.new.append({**row, "patient_id": patient_id, "master_id": master_id, "org": org})
            out.events.append(event_row(now, patient_id, master_id, None, basis, decision.probability, actor))
        else:
            master_id = _master_after_update(connection, before, decision, out.joined)
            if master_id == before.master_id:
                row.update(basis=before.basis, probability=before.probability)
            else:
                out.joined[before.master_id] -= 1
                out.events.append(event_row(now, patient_id, master_id, before.master_id, basis, decision.probability,
                                             actor, "the record changed"))
            out.changed.append({**row, "pk": before.pk, "patient_id": patient_id, "master_id": master_id})
            touched.add(before.master_id)
        out.joined[master_id] += 1
        touched.add(master_id)
        out.keys[patient_id] = sorted(set(blocking_keys(f) + frequency_keys(f)))
        out.reviews[patient_id] = [c for c in decision.reviews if c.master_id != master_id]
        pool.add(patient_id, master_id, f)
    _write(session, out, now)
    return touched


def _write(session: Session, out: _Placement, now: datetime) -> None:
    connection = session.connection()
    pks = {row.patient_id: row.pk for row in connection.execute(
        insert(mpi_record).returning(mpi_record.c.patient_id, mpi_record.c.pk), out.new)} if out.new else {}
    if out.changed:
        connection.execute(
            update(mpi_record).where(mpi_record.c.pk == bindparam("record_pk")).values(
                master_id=bindparam("master_id"), features=bindparam("features"), updated_at=bindparam("updated_at"),
                basis=bindparam("basis"), probability=bindparam("probability")),
            [{**{k: v for k, v in row.items() if k not in ("pk", "patient_id")}, "record_pk": row["pk"]} for row in out.changed],
        )
        connection.execute(delete(mpi_block).where(among(connection, mpi_block.c.record_pk, [row["pk"] for row in out.changed])))
        pks.update({row["patient_id"]: row["pk"] for row in out.changed})
    bulk_insert(session, mpi_block, [{"key": key, "record_pk": pks[pid]} for pid, keys in out.keys.items() for key in keys])
    if out.events:
        connection.execute(insert(mpi_link_event), out.events)
    queue_reviews(connection, now, out.reviews)


def _master_after_update(connection: Connection, existing: Any, decision: Decision, joined: Counter[str]) -> str:
    """A steward's placement, or an institution's merge, stands; otherwise a record keeps its master while it
    still matches it (or is alone in it), and moves when it now certainly matches another or no longer matches its own."""
    current: str = existing.master_id
    if existing.basis in ("steward", "merge-message") or decision.master_id == current:
        return current
    if decision.master_id is not None:
        return decision.master_id
    members = connection.scalar(select(func.count()).where(mpi_record.c.master_id == current)) or 0
    return current if members + joined[current] == 1 else golden.new_master_id()


def merge_masters(session: Session, source: str, target: str, *, actor: str, note: str | None = None, basis: str = "steward") -> None:
    """Move every record of master `source` into master `target` (a steward's decision, or a HIS merge message);
    every record of the two then stands where it is (basis steward or merge-message). Each move is a link event, so
    an unmerge can put them back; a steward's merge lifts the "different" pairs the two masters had."""
    connection = session.connection()
    now = dates.now()
    moved = connection.scalars(select(mpi_record.c.patient_id).where(mpi_record.c.master_id == source)).all()
    staying = connection.scalars(select(mpi_record.c.patient_id).where(mpi_record.c.master_id == target)).all()
    # both sides are placed by this decision: a later update, or a rebuild, re-deciding one of them alone would undo it
    connection.execute(update(mpi_record).where(mpi_record.c.master_id.in_([source, target])).values(master_id=target, basis=basis, updated_at=now))
    if moved:
        connection.execute(insert(mpi_link_event), [event_row(now, pid, target, source, basis, None, actor, note) for pid in moved])
    # the reviews waiting on the retired master wait on the survivor; those it now settles are obsolete
    connection.execute(update(mpi_review).where(mpi_review.c.master_id == source, mpi_review.c.status == "open").values(master_id=target))
    connection.execute(update(mpi_review).where(mpi_review.c.master_id == target, mpi_review.c.status == "open",
                                                mpi_review.c.patient_id.in_([*moved, *staying])).values(status="obsolete"))
    if basis == "steward" and moved and staying:
        everyone = [*moved, *staying]
        connection.execute(delete(mpi_distinct).where(mpi_distinct.c.patient_a.in_(everyone), mpi_distinct.c.patient_b.in_(everyone)))


def split(session: Session, patient_ids: Sequence[str], *, actor: str, note: str | None = None) -> tuple[str, str]:
    """Unmerge: these records (of one master) leave it for a master of their own, the one they were merged from
    when it is still retired, else a new one. A steward's placement: every pair across the two is declared different
    so that matching never joins them again. Returns (the master left, the master they now form)."""
    connection = session.connection()
    rows = connection.execute(select(mpi_record.c.patient_id, mpi_record.c.master_id).where(mpi_record.c.patient_id.in_(patient_ids))).all()
    unknown = sorted(set(patient_ids) - {row.patient_id for row in rows})
    if unknown:
        raise NotFound(f"Patient/{unknown[0]} is not a source record in the index", expression=["patient"])
    masters = {row.master_id for row in rows}
    if len(masters) != 1:
        raise Conflict("the records to unmerge belong to different masters; unmerge them one master at a time", expression=["patient"])
    left = masters.pop()
    staying = [pid for pid in connection.scalars(select(mpi_record.c.patient_id).where(mpi_record.c.master_id == left)) if pid not in patient_ids]
    if not staying:
        raise Conflict(f"these are all the records of master Patient/{left}: there is nothing to unmerge them from", expression=["patient"])
    earlier = connection.scalars(
        select(mpi_link_event.c.previous_master_id).where(mpi_link_event.c.patient_id.in_(patient_ids), mpi_link_event.c.master_id == left,
                                                           mpi_link_event.c.previous_master_id.is_not(None))
        .order_by(mpi_link_event.c.id.desc())).first()
    formed = earlier if earlier and not is_master(connection, earlier) else golden.new_master_id()
    now = dates.now()
    connection.execute(update(mpi_record).where(mpi_record.c.patient_id.in_(patient_ids))
                       .values(master_id=formed, basis="steward", updated_at=now))
    connection.execute(insert(mpi_link_event), [event_row(now, pid, formed, left, "steward", None, actor, note) for pid in patient_ids])
    declare_different(connection, patient_ids, staying, actor=actor, now=now)
    return left, formed


def declare_different(connection: Connection, patient_ids: Sequence[str], others: Sequence[str], *, actor: str, now: datetime) -> None:
    """A steward's word that each of these records is another person than each of the others: never matched again."""
    declared = _distinct(connection, list(patient_ids), list(others))
    different = [{"patient_a": a, "patient_b": b, "decided_by": actor, "decided_at": now}
                 for a, b in sorted({_pair(p, o) for p in patient_ids for o in others}) if (a, b) not in declared]
    if different:
        connection.execute(insert(mpi_distinct), different)


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


def queue_reviews(connection: Connection, now: datetime, reviews: dict[str, list[Candidate]], note: str | None = None) -> None:
    """Each record's doubtful masters, unless the pair is already waiting for a steward."""
    doubtful = {pid: candidates for pid, candidates in reviews.items() if candidates}
    if not doubtful:
        return
    waiting = set(connection.execute(
        select(mpi_review.c.patient_id, mpi_review.c.master_id).where(among(connection, mpi_review.c.patient_id, doubtful), mpi_review.c.status == "open")
    ).tuples())
    rows = [
        {"patient_id": pid, "master_id": c.master_id, "probability": c.probability,
         "levels": orjson.dumps(model().explain(c.levels)).decode(), "status": "open", "created_at": now, "note": note}
        for pid, candidates in doubtful.items() for c in candidates if (pid, c.master_id) not in waiting
    ]
    if rows:
        connection.execute(insert(mpi_review), rows)


def event_row(now: datetime, patient_id: str, master_id: str, previous: str | None, basis: str, probability: float | None,
               actor: str, note: str | None = None) -> dict[str, Any]:
    return {"at": now, "patient_id": patient_id, "master_id": master_id, "previous_master_id": previous, "basis": basis,
            "probability": probability, "actor": actor, "note": note}


def _json(f: Features) -> str:
    return orjson.dumps(f.to_json()).decode()


RULE = WriteRule(frozenset({"Patient"}), check=guard, after=place_written)

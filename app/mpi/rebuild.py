"""`qiao mpi rebuild`: every source Patient placed again, in memory, with the current model: a district's initial
load (Patients written while online matching was deferred, QIAO_MPI_ONLINE=false) and re-linking after a model
change.

The records are replayed in arrival order through the online path's own decision (blocking keys, score, decide)
against the records placed before them, so a rebuild places records as a day of online writes would, at batch
speed. What a steward decided stands: steward placements and institutions' merges keep their masters, and pairs
declared different still rule each other out. Masters keep their ids where their records stay together (a new
cluster takes the id most of its records had), so references to residents stay right; a master left empty is
retired `replaced-by` the one most of its records went to.

Patients written while it runs (PostgreSQL) are stored at once, and their matching waits: the rebuild places them
through the online path once its own placements are written (app/mpi/rebuild_lock.py). A second rebuild is refused
while one runs.
"""

import logging
import multiprocessing
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, func, select, text, update

from app import db
from app import logging as qiao_logging
from app.config import Settings, get_settings
from app.logging import fields
from app.mpi import features as feature_reader
from app.mpi import golden, linker, rebuild_lock
from app.mpi.features import Features
from app.mpi.tables import mpi_block, mpi_common, mpi_deferred, mpi_distinct, mpi_link_event, mpi_record, mpi_review
from app.store import dates
from app.store import repository as store
from app.store.tables import resource, resource_version

log = logging.getLogger("qiao.mpi")
FIXED = ("steward", "merge-message")  # placements a rebuild keeps
BATCH = 2000  # records written per transaction (a quarter as many masters)
NOTE = "qiao mpi rebuild"
MASTER_PROCESSES = 2  # the machine's cores


@dataclass
class Record:
    patient_id: str
    org: str | None
    features: Features
    pk: int | None = None  # its mpi_record row, when already indexed
    master_id: str | None = None  # as indexed
    basis: str | None = None
    indexed_features: str | None = None  # as indexed (JSON)


@dataclass
class Summary:
    records: int = 0
    new_records: int = 0
    moved: int = 0
    masters: int = 0
    reviews: int = 0
    deferred: int = 0  # Patients written during the rebuild, placed at its end
    seconds: dict[str, float] = field(default_factory=dict)


def rebuild(actor: str = "operator") -> Summary:
    """Place every record again; Patients written meanwhile are placed at the end (rebuild_lock)."""
    with rebuild_lock.held() as hold:
        summary = _rebuild(actor)
        clock = time.monotonic()
        hold.close_deferrals()
        summary.deferred = _place_deferred(actor)
        summary.seconds["deferred"] = time.monotonic() - clock
    return summary


def _rebuild(actor: str) -> Summary:
    summary = Summary()
    started = time.monotonic()
    records, distinct, masters_before = source_records()
    summary.records = len(records)
    summary.seconds["read"] = time.monotonic() - started
    clock = time.monotonic()
    shares = Counter(key for r in records for key in set(linker.frequency_keys(r.features)))
    placement, probability, reviews = _replay(records, distinct, masters_before or _residents(records), shares)
    summary.seconds["match"] = time.monotonic() - clock
    clock = time.monotonic()
    final = _master_ids(records, placement)
    retired = _retired(records, placement, final)
    touched = _write(records, placement, probability, reviews, final, actor, summary)
    _keep_common(shares)
    _vacuum()
    summary.seconds["write"] = time.monotonic() - clock
    clock = time.monotonic()
    _refresh_masters(sorted(touched | set(retired)), retired)
    summary.masters = len(set(final.values()))
    with db.transaction() as session:  # the next fresh process starts from this count instead of reading the index
        linker.keep_census(session.connection(), linker.Census(summary.masters, summary.records))
    summary.seconds["masters"] = time.monotonic() - clock
    log.info("mpi.rebuilt", extra=fields(records=summary.records, moved=summary.moved, masters=summary.masters))
    return summary


def _place_deferred(actor: str) -> int:
    """Place, through the online path, the Patients written while the rebuild ran (their matching waited)."""
    with db.transaction() as session:
        connection = session.connection()
        ids = list(connection.scalars(delete(mpi_deferred).returning(mpi_deferred.c.patient_id)))
        if not ids:
            return 0
        rows = connection.execute(
            select(resource.c.res_id, resource.c.org, resource.c.deleted, resource_version.c.content)
            .join(resource_version, store.CURRENT_VERSION)
            .where(resource.c.res_type == "Patient", db.among(connection, resource.c.res_id, ids)))
        contents = [(row.res_id, row.org, None if row.deleted or not row.content else orjson.loads(row.content)) for row in rows]
        linker.place_sources(session, [c for c in contents if c[2] is None or not golden.is_master(c[2])], actor)
    log.info("mpi.deferred_placed", extra=fields(records=len(ids)))
    return len(ids)


def source_records() -> tuple[list[Record], set[tuple[str, str]], int]:
    """Every source Patient in arrival order, its features read from it now (the feature code may have changed, or
    it was written while matching was deferred) and its index entry if it has one; the steward's "different" pairs;
    the number of masters."""
    records: list[Record] = []
    with db.transaction() as session:  # a transaction: PostgreSQL streams rows through a cursor only inside one
        connection = session.connection()
        rows = connection.execution_options(yield_per=2_000).execute(
            select(resource.c.res_id, resource.c.org, resource_version.c.content, mpi_record.c.pk, mpi_record.c.master_id,
                   mpi_record.c.basis, mpi_record.c.features)
            .join(resource_version, store.CURRENT_VERSION)
            .outerjoin(mpi_record, mpi_record.c.patient_id == resource.c.res_id)
            .where(resource.c.res_type == "Patient", resource.c.deleted.is_(False))
            .order_by(resource.c.pk))
        for row in rows:
            content = orjson.loads(row.content)
            if not golden.is_master(content):
                records.append(Record(row.res_id, row.org, feature_reader.of_patient(content), row.pk, row.master_id, row.basis, row.features))
        distinct = {(a, b) for a, b in connection.execute(select(mpi_distinct.c.patient_a, mpi_distinct.c.patient_b))}
        masters = int(connection.scalar(select(func.count(func.distinct(mpi_record.c.master_id)))) or 0)
    return records, distinct, masters


def _residents(records: list[Record]) -> int:
    """An initial load's population, estimated before matching: the records with a valid ID number hold as many
    residents as distinct numbers, and the others are taken to repeat residents as often. A valid mistyped number
    counts as another resident, so it runs high (27,301 for 23,059 people in the 50,000-record benchmark); a name's
    rarity is judged against it, and 20% too many moves a pair's weight by a quarter of a bit, to the cautious side."""
    numbers = [r.features.id_number for r in records if r.features.id_valid]
    return round(len(records) * len(set(numbers)) / len(numbers)) if numbers else len(records)


def _replay(records: list[Record], distinct: set[tuple[str, str]], residents: int, shares: Counter[str]
            ) -> tuple[dict[str, str], dict[str, float | None], dict[str, list[linker.Candidate]]]:
    """Each record's cluster (a fixed master id, or "new:N"), its probability and its doubtful candidates. Term
    frequencies are shares of the records (`shares`: records per value); `residents` is the population a name's
    rarity is judged against."""
    keys = Counter(key for r in records for key in set(linker.blocking_keys(r.features)))
    population = max(residents, get_settings().mpi_min_population)
    pool = linker.Pool({}, {}, {key: count / len(records) for key, count in shares.items()}, distinct, population,
                       closed=frozenset(key for key, count in keys.items() if count > linker.BLOCK_LIMIT))
    placement: dict[str, str] = {}
    probability: dict[str, float | None] = {}
    reviews: dict[str, list[linker.Candidate]] = {}
    for record in records:
        if record.basis in FIXED and record.master_id:
            placement[record.patient_id] = record.master_id
            pool.add(record.patient_id, record.master_id, record.features)
    for number, record in enumerate(records):
        if record.patient_id in placement:
            continue
        decision = linker.decide(pool.score(record.features, exclude=record.patient_id))
        cluster = decision.master_id or f"new:{number}"
        placement[record.patient_id] = cluster
        probability[record.patient_id] = decision.probability
        reviews[record.patient_id] = [c for c in decision.reviews if c.master_id != cluster]
        pool.add(record.patient_id, cluster, record.features)
    return placement, probability, reviews


def _master_ids(records: list[Record], placement: dict[str, str]) -> dict[str, str]:
    """Cluster → master id: a fixed master keeps its own; the others, largest first, take the master id most of
    their records had, unless another cluster took it; else a new one."""
    had: dict[str, Counter[str]] = {}
    for record in records:
        had.setdefault(placement[record.patient_id], Counter())
        if record.master_id:
            had[placement[record.patient_id]][record.master_id] += 1
    final = {cluster: cluster for cluster in had if not cluster.startswith("new:")}
    taken = set(final.values())
    for cluster in sorted((c for c in had if c.startswith("new:")), key=lambda c: -sum(had[c].values())):
        best = next((master for master, _ in had[cluster].most_common() if master not in taken), None)
        final[cluster] = best or golden.new_master_id()
        taken.add(final[cluster])
    return final


def _retired(records: list[Record], placement: dict[str, str], final: dict[str, str]) -> dict[str, str]:
    """Masters no record keeps → the master most of their records went to."""
    went: dict[str, Counter[str]] = {}
    for record in records:
        if record.master_id:
            went.setdefault(record.master_id, Counter())[final[placement[record.patient_id]]] += 1
    alive = set(final.values())
    return {master: destinations.most_common(1)[0][0] for master, destinations in went.items() if master not in alive}


def _write(records: list[Record], placement: dict[str, str], probability: dict[str, float | None],
           reviews: dict[str, list[linker.Candidate]], final: dict[str, str], actor: str, summary: Summary) -> set[str]:
    """The new placements, in batches of records, each its own transaction; the masters whose records changed."""
    touched: set[str] = set()
    open_reviews = _open_reviews()
    for chunk in _chunks(records, BATCH):
        now = dates.now()
        by_pk = {r.pk: r for r in chunk if r.pk is not None}
        new_rows, moves, refeatured, events = [], [], [], []
        for record in chunk:
            master_id = final[placement[record.patient_id]]
            basis = "match" if probability.get(record.patient_id) is not None else "new"
            features_json = orjson.dumps(record.features.to_json()).decode()
            if record.pk is None:
                new_rows.append({"patient_id": record.patient_id, "master_id": master_id, "org": record.org, "basis": basis,
                                 "features": features_json, "updated_at": now,
                                 "probability": probability.get(record.patient_id)})
                events.append(linker.event_row(now, record.patient_id, master_id, None, basis, probability.get(record.patient_id), actor, NOTE))
                touched.add(master_id)
                continue
            if features_json != record.indexed_features:
                refeatured.append({"record_pk": record.pk, "features": features_json})
            if master_id != record.master_id:
                moves.append({"record_pk": record.pk, "master_id": master_id, "basis": basis, "updated_at": now,
                              "probability": probability.get(record.patient_id)})
                events.append(linker.event_row(now, record.patient_id, master_id, record.master_id, basis, probability.get(record.patient_id), actor,
                                              NOTE))
                touched |= {master_id, record.master_id}
        with db.transaction() as session:
            connection = session.connection()
            db.bulk_insert(session, mpi_record, new_rows)
            pks = {patient_id: pk for patient_id, pk in connection.execute(select(mpi_record.c.patient_id, mpi_record.c.pk).where(
                db.among(connection, mpi_record.c.patient_id, [row["patient_id"] for row in new_rows])))} if new_rows else {}
            if refeatured:
                connection.execute(update(mpi_record).where(mpi_record.c.pk == bindparam("record_pk")).values(features=bindparam("features")),
                                   refeatured)
                connection.execute(delete(mpi_block).where(db.among(connection, mpi_block.c.record_pk, [row["record_pk"] for row in refeatured])))
            keyed = [(pks[r.patient_id], r.features) for r in chunk if r.patient_id in pks]
            keyed += [(row["record_pk"], by_pk[row["record_pk"]].features) for row in refeatured]
            db.bulk_insert(session, mpi_block, [{"key": key, "record_pk": pk} for pk, f in keyed
                                                for key in sorted(set(linker.blocking_keys(f) + linker.frequency_keys(f)))])
            if moves:
                connection.execute(update(mpi_record).where(mpi_record.c.pk == bindparam("record_pk")).values(
                    master_id=bindparam("master_id"), basis=bindparam("basis"), updated_at=bindparam("updated_at"), probability=bindparam("probability")), moves)
            db.bulk_insert(session, mpi_link_event, events)
            _reviews(connection, now, chunk, reviews, placement, final, open_reviews)
        summary.new_records += len(new_rows)
        summary.moved += len(moves)
        summary.reviews += sum(len(reviews.get(r.patient_id, [])) for r in chunk)
    return touched


def _keep_common(shares: Counter[str]) -> None:
    """The records under each common value, for online matching to start from (linker.COMMON_KEPT_DAYS)."""
    now = dates.now()
    with db.transaction() as session:
        session.execute(delete(mpi_common))
        db.bulk_insert(session, mpi_common, [{"key": key, "records": count, "counted_at": now}
                                             for key, count in sorted(shares.items()) if count >= linker.COMMON])


def _open_reviews() -> dict[str, list[tuple[int, str]]]:
    """Each record's open reviews (id, master): the queue is small, and read once it is not searched per batch."""
    found: dict[str, list[tuple[int, str]]] = {}
    with db.transaction() as session:
        for review_id, patient_id, master_id in session.execute(
                select(mpi_review.c.id, mpi_review.c.patient_id, mpi_review.c.master_id).where(mpi_review.c.status == "open")):
            found.setdefault(patient_id, []).append((review_id, master_id))
    return found


def _reviews(connection: Any, now: Any, chunk: list[Record], reviews: dict[str, list[linker.Candidate]], placement: dict[str, str],
             final: dict[str, str], open_reviews: dict[str, list[tuple[int, str]]]) -> None:
    """The batch's open reviews become those the replay found: the rest are obsolete, the new ones queued."""
    wanted = {record.patient_id: [linker.Candidate(c.patient_id, final[placement[c.patient_id]], c.probability, c.levels, c.grade)
                                  for c in reviews.get(record.patient_id, [])] for record in chunk if record.basis not in FIXED}
    if not wanted:
        return
    keep = {(pid, c.master_id) for pid, candidates in wanted.items() for c in candidates}
    stale = [review_id for pid in wanted for review_id, master_id in open_reviews.get(pid, ()) if (pid, master_id) not in keep]
    if stale:
        connection.execute(update(mpi_review).where(db.among(connection, mpi_review.c.id, stale)).values(status="obsolete"))
    linker.queue_reviews(connection, now, wanted)


def _refresh_masters(masters: list[str], retired: dict[str, str]) -> None:
    """The masters rewritten from their records, in chunks, each its own transaction. On PostgreSQL processes share
    the work (no two chunks hold one master: the registries lock per master); threads had shared one interpreter,
    whose lock their Python work held nine tenths of the time at 1M records."""
    chunks = [(chunk, {m: retired[m] for m in chunk if m in retired}) for chunk in _chunks(masters, BATCH // 4)]
    engine = db.get_engine()
    if engine.dialect.name != "postgresql" or len(chunks) < 2:
        for chunk in chunks:
            _refresh_chunk(chunk)
        return
    with ProcessPoolExecutor(MASTER_PROCESSES, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                             initargs=(engine.url.render_as_string(hide_password=False), get_settings())) as pool:
        list(pool.map(_refresh_chunk, chunks))  # list(): a chunk that failed raises here


def _start_worker(database_url: str, settings: Settings) -> None:
    """A masters process: the rebuild's settings and database (spawned, it inherits neither)."""
    current = get_settings()
    for name in type(settings).model_fields:
        object.__setattr__(current, name, getattr(settings, name))
    qiao_logging.configure(settings.log_level)
    db.set_engine(db.make_engine(database_url, pool_size=2))


def _refresh_chunk(chunk: tuple[list[str], dict[str, str]]) -> None:
    masters, retired = chunk
    with db.transaction() as session:
        golden.refresh(session, masters, replaced_by=retired)


def _vacuum() -> None:
    """Fresh planner statistics and visibility map for the index's tables, which a rebuild may have filled from empty:
    PostgreSQL's own vacuum comes later, and until then its plans for the masters' writes (and online matching)
    assume empty tables, and online matching's index-only reads (migration 0017) visit the table for every row
    (VACUUM took 3.5 s at 1M records)."""
    with db.get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("VACUUM (ANALYZE) mpi_record, mpi_block, mpi_review, mpi_link_event"))


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]

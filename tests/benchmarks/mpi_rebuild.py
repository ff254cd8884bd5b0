"""Batch linkage: a district's initial load with matching deferred, then `qiao mpi rebuild` placing every record.

    .venv/bin/python -m tests.benchmarks.mpi_rebuild [--records 100000] [--seed 11] [--reuse]

The labelled generated residents (tests/benchmarks/residents.py), in random order, are posted as transaction
Bundles of 100 Patients to `qiao serve` on a scratch PostgreSQL database with QIAO_MPI_ONLINE=false (the load
itself, the baseline: the same machine storing the same Patients without matching). Then `qiao mpi rebuild` runs
as its own process: its wall time per phase, its peak memory (max RSS), records per second as a ratio to the load
rate, and the pairwise quality of the masters it made and the share of records it sent to review.

Then online matching against that index (`--online N`, default 1,000): N further records of the same generator,
held out of the load (so some are new residents and some are more records of residents in the index), are posted
one at a time to `qiao serve`: to `Patient/$match` (the matching alone: candidates, scores, grades), and as new
Patients with matching switched off (the baseline, same run) and on (matching, placing, and the master and its
registry entries rewritten in the write's transaction). Reported: p50 and p99 latency of each, and what matching
adds to the write.
"""

import argparse
import hashlib
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

from tests.benchmarks import residents
from tests.benchmarks.common import ADMIN_URL, drop_database, migrated_database, operator_token, qiao_server, url_of
from tests.benchmarks.mpi_quality import REVIEWS_SQL, post_records, quality, review_queue
from tests.benchmarks.residents import generate

DATABASE = "qiao_bench_mpi_rebuild"
TEMPLATE = "qiao_bench_mpi_load"  # --reuse: the load, unplaced, and which load it is (its comment)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--reuse", action="store_true",
                        help=f"keep the load in database {TEMPLATE} and start from it when the records and seed are the same")
    parser.add_argument("--online", type=int, default=1000, help="records held out of the load, then matched online one by one")
    parser.add_argument("--online-only", action="store_true",
                        help=f"only the online part, against the index the last run left in {DATABASE} (it keeps what earlier online runs wrote)")
    options = parser.parse_args()

    records = generate(options.records, seed=options.seed)
    random.Random(options.seed).shuffle(records)
    records, held_out = records[:len(records) - options.online], records[len(records) - options.online:]
    print(f"mpi rebuild: {len(records)} records of {len({p for _, p, _ in records})} people (seed {options.seed}),"
          f" {len(held_out)} held out for online matching")
    kept = f"records={len(records)} seed={options.seed} online={len(held_out)} generator={_generator_digest()}"
    if options.online_only:
        with psycopg.connect(url_of(DATABASE)) as connection:
            indexed = connection.execute("SELECT count(*) FROM mpi_record").fetchone()
        online(url_of(DATABASE), held_out, int(indexed[0]) if indexed else 0)
        return
    if options.reuse and _template_holds(kept):
        database_url = _from_template()
        placed, load_rate = _kept_load()
        print(f"load, matching deferred: kept from an earlier run in {TEMPLATE} ({load_rate:.0f}/s when it was made)")
    else:
        database_url = migrated_database(DATABASE)
        with qiao_server(database_url, env={"QIAO_MPI_ONLINE": "false"}) as server:
            placed, seconds, failed = post_records(server.url, records, clients=options.clients, bundle=100, database_url=database_url)
        load_rate = len(placed) / seconds
        print(f"load, matching deferred: {len(placed)} Patients in {seconds:.0f} s ({load_rate:.0f}/s), {len(failed)} failed bundles")
        if options.reuse:
            _keep_template(kept, placed, load_rate)

    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "app.cli", "mpi", "rebuild"], capture_output=True, text=True,
                         env={**os.environ, "QIAO_DATABASE_URL": database_url, "QIAO_LOG_LEVEL": "WARNING"})
    wall = time.monotonic() - started
    if run.returncode != 0:
        raise SystemExit(f"qiao mpi rebuild failed: {run.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB → MiB, the largest child: the rebuild
    rate = len(placed) / wall
    print(f"qiao mpi rebuild: {run.stdout.strip()}")
    print(f"  {wall:.0f} s wall ({rate:.0f} records/s, {rate / load_rate:.2f}× the load rate), peak memory {peak:.0f} MiB;"
          f" at that rate 1,000,000 records take {1_000_000 / rate / 60:.1f} min")

    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        master_of = dict(connection.execute("SELECT patient_id, master_id FROM mpi_record").fetchall())
        reviews = connection.execute(REVIEWS_SQL).fetchall()
    person_of = {record_id: person for record_id, person, _ in records if record_id in placed}
    print(quality(person_of, {r: master_of[placed[r]] for r in person_of}).line("masters"))
    review_queue(reviews, master_of, {placed[r]: p for r, p in person_of.items()}, len(placed))
    if held_out:
        online(database_url, held_out, len(master_of))


def online(database_url: str, held_out: list[tuple[str, str, dict[str, Any]]], indexed: int) -> None:
    """Each held-out record POSTed alone, one after another: without matching (baseline), then with it."""
    bodies = [orjson.dumps(patient) for _, _, patient in held_out]
    latencies: dict[str, list[float]] = {}
    matches = [orjson.dumps({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient}]})
               for _, _, patient in held_out]
    runs = (("$match (matching alone)", {}, "Patient/$match", matches, 200),
            ("write without matching", {"QIAO_MPI_ONLINE": "false"}, "Patient", bodies, 201),
            ("write with matching", {}, "Patient", bodies, 201))
    for mode, env, path, posted, expected in runs:
        with qiao_server(database_url, workers=1, env={**env, "QIAO_MLLP_PORT": "0"}) as server, httpx.Client(timeout=60) as http:
            headers = {**operator_token(database_url), "Content-Type": "application/fhir+json"}
            taken = latencies[mode] = []
            for body in posted:
                started = time.perf_counter()
                response = http.post(f"{server.url}/{path}", content=body, headers=headers)
                taken.append(time.perf_counter() - started)
                if response.status_code != expected:
                    raise SystemExit(f"online {mode}: {response.status_code} {response.text[:300]}")
    base, matched = latencies["write without matching"], latencies["write with matching"]
    print(f"online: {len(bodies)} Patients POSTed one at a time against an index of {indexed} records")
    for mode, taken in latencies.items():
        slowest = sorted(range(len(taken)), key=taken.__getitem__)[-10:]
        print(f"  {mode:24} p50 {statistics.median(taken) * 1000:6.1f} ms  p99 {_p99(taken) * 1000:6.1f} ms"
              f"  (the 10 slowest were requests {sorted(slowest)})")
    print(f"  matching adds p50 {(statistics.median(matched) - statistics.median(base)) * 1000:.1f} ms,"
          f" p99 {(_p99(matched) - _p99(base)) * 1000:.1f} ms ({_p99(matched) / _p99(base):.2f}× the write's p99)")


def _p99(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99)]


def _generator_digest() -> str:
    """The generator's source, digested: a kept load made by another version of it is not the same load."""
    return hashlib.sha256(Path(residents.__file__).read_bytes()).hexdigest()[:12]


def _template_comment() -> str:
    """Which load the template holds ("records=N seed=S generator=D rate=R"), or "" when there is none."""
    with psycopg.connect(ADMIN_URL) as connection:
        found = connection.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", [TEMPLATE]).fetchone()
    return str(found[0] or "") if found else ""


def _template_holds(kept: str) -> bool:
    return _template_comment().startswith(kept + " ")


def _keep_template(kept: str, placed: dict[str, str], load_rate: float) -> None:
    """The loaded, unplaced database copied as the template, with the record → Patient map and the load rate."""
    drop_database(TEMPLATE)
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {TEMPLATE} TEMPLATE {DATABASE}")
        connection.execute(f"COMMENT ON DATABASE {TEMPLATE} IS '{kept} rate={load_rate:.0f}'")
    with psycopg.connect(url_of(TEMPLATE), autocommit=True) as connection:
        connection.execute("CREATE TABLE bench_placed (record_id text PRIMARY KEY, patient_id text NOT NULL)")
        with connection.cursor().copy("COPY bench_placed FROM STDIN") as copy:
            for row in placed.items():
                copy.write_row(row)


def _from_template() -> str:
    """A copy of the kept load, its schema brought up to date (`qiao migrate`, as an operator does after upgrading)."""
    drop_database(DATABASE)
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {DATABASE} TEMPLATE {TEMPLATE}")
    subprocess.run([sys.executable, "-m", "app.cli", "migrate"], check=True,
                   env={**os.environ, "QIAO_DATABASE_URL": url_of(DATABASE), "QIAO_LOG_LEVEL": "WARNING"})
    return url_of(DATABASE)


def _kept_load() -> tuple[dict[str, str], float]:
    with psycopg.connect(url_of(TEMPLATE)) as connection:
        placed = dict(connection.execute("SELECT record_id, patient_id FROM bench_placed").fetchall())
    return placed, float(_template_comment().rsplit("rate=", 1)[1])


if __name__ == "__main__":
    main()

"""Read and search benchmark with many resources stored, 16 concurrent clients, against PostgreSQL.

    .venv/bin/python -m tests.benchmarks.read_search [--stored 1000000] [--clients 16] [--seconds 15] [--workers 2]

The data (half Patients, half blood-pressure Observations) is loaded through the store's own write path
(`repository.apply`: the same rows and index rows as the REST API, without per-resource validation) by two
processes. Baseline in the same run: the same point query sent straight to PostgreSQL with psycopg from 16 threads.
"""

import argparse
import multiprocessing
import random
import threading
import time
import uuid
from urllib.parse import quote

import psycopg

from app import db, migrate
from app.store import repository
from tests.benchmarks.common import (
    analysing,
    blood_pressure,
    http_load,
    id_card,
    mib,
    operator_token,
    patient,
    qiao_server,
    scratch_database,
    threaded_rate,
    url_of,
)

NAMESPACE = uuid.UUID("6b0f7c1e-8f9b-4d3c-9a59-2f5b6e3c1d00")
BATCH = 2000


def patient_id(n: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"Patient/{n}"))


def load_range(database_url: str, start: int, stop: int, org: str | None = None) -> None:
    engine = db.make_engine(database_url, pool_size=2)
    db.set_engine(engine)
    rng = random.Random(start)
    for first in range(start, stop, BATCH):
        writes = []
        for n in range(first, min(first + BATCH, stop), 2):
            pid = patient_id(n)
            writes.append(repository.Write("Patient", pid, "POST", patient(n, rng), None, org=org))
            writes.append(repository.Write("Observation", str(uuid.uuid5(NAMESPACE, f"Observation/{n}")), "POST",
                                           blood_pressure(f"Patient/{pid}", n, rng), None, org=org))
        session = db.new_session()
        repository.apply(session, writes)
        session.commit()
        session.close()
    engine.dispose()


def load(database_url: str, stored: int, processes: int = 2, org: str | None = None) -> float:
    engine = db.make_engine(database_url)
    migrate.upgrade(engine)
    engine.dispose()
    step = stored // processes // BATCH * BATCH
    ranges = [(i * step, stored if i == processes - 1 else (i + 1) * step) for i in range(processes)]
    start = time.perf_counter()
    workers = [multiprocessing.Process(target=load_range, args=(database_url, a, b, org)) for a, b in ranges]
    with analysing(database_url):
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
            if worker.exitcode != 0:
                raise RuntimeError("a loader process failed")
    seconds = time.perf_counter() - start
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return stored / seconds


def raw_point_reads(database_url: str, patients: int, clients: int, seconds: float):
    connections = [psycopg.connect(database_url, autocommit=True) for _ in range(clients)]
    sql = (
        "SELECT CAST(v.content AS TEXT) FROM resource r JOIN resource_version v "
        "ON v.resource_pk = r.pk AND v.version_id = r.version_id WHERE r.res_type = 'Patient' AND r.res_id = %s"
    )
    rng = random.Random(3)

    def work(i: int) -> None:
        conn = connections[i // 10_000_000]
        conn.execute(sql, (patient_id(rng.randrange(patients) * 2),), prepare=True).fetchone()

    try:
        return threaded_rate(work, threads=clients, seconds=seconds)
    finally:
        for conn in connections:
            conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stored", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="keep the database of the previous run")
    args = parser.parse_args()
    patients = args.stored // 2
    name = "qiao_bench_read"
    if args.reuse:
        database_url = url_of(name)
        print(f"read/search: reusing {name}")
    else:
        database_url = scratch_database(name)
        rate = load(database_url, args.stored)
        print(f"read/search: loaded {args.stored} resources ({patients} Patients) at {rate:.0f}/s through the store")

    rng = random.Random(11)

    def read_path() -> str:
        return f"/fhir/Patient/{patient_id(rng.randrange(patients) * 2)}"

    def identifier_path() -> str:
        n = rng.randrange(patients) * 2
        value = id_card(n)
        return f"/fhir/Patient?identifier={quote('urn:oid:2.16.156.10011.1.3|' + value, safe='')}"

    with qiao_server(database_url, workers=args.workers) as server:
        auth = operator_token(database_url)
        http_load(server.url, read_path, clients=args.clients, seconds=2, headers=auth)  # warm-up
        http_load(server.url, identifier_path, clients=args.clients, seconds=2, headers=auth)
        split: list[int] = []
        threading.Timer(2, lambda: split.extend(server.connections_per_worker())).start()
        reads = http_load(server.url, read_path, clients=args.clients, seconds=args.seconds, headers=auth)
        searches = http_load(server.url, identifier_path, clients=args.clients, seconds=args.seconds, headers=auth)
        rss = server.rss_bytes()
    raw = raw_point_reads(database_url, patients, args.clients, args.seconds)

    print(f"  {args.clients} clients, {args.workers} workers, {args.stored} resources stored")
    print(f"  client connections per worker: {split or 'unknown (no ss)'}")
    print("  " + reads.line("read Patient/{id}"))
    print("  " + searches.line("search Patient?identifier=sys|value"))
    print("  " + raw.line("baseline: psycopg point query"))
    print(f"  read = {reads.rate / raw.rate:.2f} x raw point query rate; search = {searches.rate / raw.rate:.2f} x")
    print(f"  server RSS (all processes) after the run: {mib(rss)}")


if __name__ == "__main__":
    main()

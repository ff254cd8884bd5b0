"""Ingest benchmark: resources posted as transaction Bundles over HTTP into PostgreSQL, with same-run baselines.

    .venv/bin/python -m tests.benchmarks.ingest [--resources 100000] [--bundle 100] [--clients 8] [--workers 2]

Baselines measured in the same run, on the same resources:
- raw insert: psycopg executemany of the same JSON into a bare (id, content jsonb) table, one transaction per bundle;
- validation: fhir.resources (R4B) model_validate of the same resources, in one process.
"""

import argparse
import random
import time
import uuid

import httpx
import orjson
import psycopg

from app.fhir.resources import model_class
from tests.benchmarks.common import blood_pressure, mib, operator_token, patient, post_concurrently, qiao_server, scratch_database


def bundles(total: int, size: int, seed: int = 7) -> list[list[dict]]:
    """Bundles of Patients and their blood-pressure Observations (half each), linked by urn:uuid references."""
    rng = random.Random(seed)
    out, n = [], 0
    while n < total:
        entries = []
        for _ in range(size // 2):
            full_url = f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}"
            entries.append({"fullUrl": full_url, "resource": patient(n, rng), "request": {"method": "POST", "url": "Patient"}})
            entries.append({"resource": blood_pressure(full_url, n, rng), "request": {"method": "POST", "url": "Observation"}})
            n += 2
        out.append(entries)
    return out


def raw_insert_rate(database_url: str, batches: list[list[dict]]) -> float:
    rows = [[(str(uuid.uuid4()), orjson.dumps(e["resource"]).decode()) for e in batch] for batch in batches]
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE bare (id text PRIMARY KEY, content jsonb NOT NULL)")
        conn.commit()
        start = time.perf_counter()
        for batch in rows:
            with conn.cursor() as cursor:
                cursor.executemany("INSERT INTO bare (id, content) VALUES (%s, %s)", batch)
            conn.commit()
        return sum(len(b) for b in rows) / (time.perf_counter() - start)


def validation_rate(batches: list[list[dict]]) -> float:
    resources = [e["resource"] for batch in batches for e in batch]
    classes = {t: model_class(t) for t in {r["resourceType"] for r in resources}}
    start = time.perf_counter()
    for resource in resources:
        classes[resource["resourceType"]].model_validate(resource)
    return len(resources) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resources", type=int, default=100_000)
    parser.add_argument("--bundle", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    batches = bundles(args.resources, args.bundle)
    total = sum(len(b) for b in batches)
    bodies = [orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": b}) for b in batches]
    print(f"ingest: {total} resources in {len(bodies)} transaction Bundles of {args.bundle}, "
          f"{args.clients} clients, {args.workers} workers, PostgreSQL")

    database_url = scratch_database("qiao_bench_ingest")
    with qiao_server(database_url, workers=args.workers) as server:
        auth = operator_token(database_url)
        idle_rss = server.rss_bytes()
        server.sample_rss()
        split: list[int] = []
        statuses: list[int] = []
        seconds = post_concurrently(server.url, bodies, clients=args.clients, headers=lambda: auth,
                                    on_response=lambda _, response: statuses.append(response.status_code),
                                    on_start=lambda: split.extend(server.connections_per_worker()))
        failures = sum(status != 200 for status in statuses)
        peak_rss = max(server.rss_samples or [idle_rss])
        end_rss = server.rss_bytes()
        stored = httpx.get(f"{server.url}/Observation?_summary=count", headers=auth).json()["total"] * 2
    qiao_rate = total / seconds

    raw = raw_insert_rate(scratch_database("qiao_bench_raw"), batches)
    validate = validation_rate(batches)

    print(f"  qiao over HTTP        {qiao_rate:8.0f} resources/s  ({seconds:.1f} s, {failures} failed bundles, {stored} stored)")
    print(f"  raw psycopg insert    {raw:8.0f} rows/s        qiao = {qiao_rate / raw:.2f} x raw insert")
    print(f"  fhir.resources valid. {validate:8.0f} resources/s  qiao = {qiao_rate / validate:.2f} x one-process validation")
    print(f"  server RSS (all processes): idle {mib(idle_rss)}, peak {mib(peak_rss)}, after {mib(end_rss)}")
    print(f"  client connections per worker: {split or 'unknown (no ss)'}")


if __name__ == "__main__":
    main()

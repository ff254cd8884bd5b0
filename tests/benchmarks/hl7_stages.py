"""Where an ORU^R01's time goes, in one process (no HTTP, no MLLP): the pure stages one by one, then whole messages
through `pipeline.receive` into PostgreSQL in batches of several sizes, with this process's CPU and PostgreSQL's.

    .venv/bin/python -m tests.benchmarks.hl7_stages [--patients 200] [--batches 1,4,16]

The MLLP benchmark measures the rate; this one says what bounds it: each stage's milliseconds per message, and
how much of a message's cost a batch shares out (one commit, a few statements per batch instead of per message).
PostgreSQL's CPU is read from /proc (every postgres process of the machine: run it on an otherwise idle server).
"""

import argparse
import os
import random
import time
from collections.abc import Callable
from typing import Any

import psycopg

from tests.benchmarks.common import migrated_database
from tests.benchmarks.mllp import admission, result


def postgres_cpu() -> float:
    """CPU seconds used so far by every process named postgres."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as comm, open(f"/proc/{pid}/stat") as stat:
                if comm.read().startswith("postgres"):
                    fields = stat.read().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / ticks
        except OSError:
            continue
    return total


def per_message(label: str, items: list[Any], work: Callable[[Any], Any]) -> list[Any]:
    best, out = float("inf"), []
    for _ in range(3):
        start = time.perf_counter()
        out = [work(item) for item in items]
        best = min(best, time.perf_counter() - start)
    print(f"  {label:<34} {best / len(items) * 1000:6.2f} ms per message")
    return out


def stages(raws: list[bytes]) -> None:
    from adapters.hl7v2 import parse
    from app.config import get_settings
    from app.fhir import resources
    from app.ingest.sources import by_facility
    from app.mapping import engine
    from app.store.indexing import index_rows

    source = by_facility("DCH")
    assert source is not None
    mapping, attributes, settings = engine.find("hl7v2", "ORU^R01"), source.mapping_attributes(), get_settings()
    records = per_message("parse (python-hl7, GB18030)", raws, lambda raw: parse.parse(raw, default_charset="gb18030"))
    made = per_message("map (12 resources)", records, lambda record: engine.apply(mapping, record, attributes))
    per_message("validate (shapes remembered)", made, lambda produced: [resources.validate(p.content) for p in produced])
    per_message("index rows", made, lambda produced: [index_rows(p.content, zone=settings.zone, base_url=settings.base_url)
                                                      for p in produced])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--batches", default="1,4,16", help="batch sizes to apply the results in")
    args = parser.parse_args()
    rng = random.Random(5)
    admissions = [admission(n, rng) for n in range(args.patients)]
    results = [result(n, k, rng) for k in range(2) for n in range(args.patients)]
    print(f"hl7_stages: ORU^R01 of 10 OBX, {args.patients} patients, PostgreSQL")
    stages(results[: args.patients])

    for size in (int(b) for b in args.batches.split(",")):
        os.environ["QIAO_DATABASE_URL"] = migrated_database("qiao_bench_hl7_stages")
        from app import db
        from app.config import get_settings
        from app.ingest import pipeline

        get_settings.cache_clear()
        db.set_engine(db.make_engine(os.environ["QIAO_DATABASE_URL"]))

        def receive(messages: list[bytes], size: int = size) -> None:
            for start in range(0, len(messages), size):
                outcomes = pipeline.receive([pipeline.Inbound(m, "mllp") for m in messages[start:start + size]])
                assert all(o.ack_code == "AA" for o in outcomes), [o.text for o in outcomes]

        receive(admissions)
        receive(results[:40])
        with psycopg.connect(os.environ["QIAO_DATABASE_URL"], autocommit=True) as conn:
            conn.execute("ANALYZE")
        measured = results[40:]
        wall, cpu, postgres = time.perf_counter(), time.process_time(), postgres_cpu()
        receive(measured)
        n = len(measured)
        print(f"  batches of {size:<3} {(time.perf_counter() - wall) / n * 1000:6.2f} ms per message, this process's CPU "
              f"{(time.process_time() - cpu) / n * 1000:5.2f} ms, PostgreSQL's CPU {(postgres_cpu() - postgres) / n * 1000:5.2f} ms")


if __name__ == "__main__":
    main()

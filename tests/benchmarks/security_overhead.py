"""What authentication, the access policy and the audit trail cost on reads and searches.

    .venv/bin/python -m tests.benchmarks.security_overhead [--stored 200000] [--seconds 15] [--rounds 2] [--baseline REV]

Same data, same run, same load: the server of git revision REV (default: the last commit before security, which
had no auth, policy or audit; run from a temporary worktree) against this checkout's server, alternating, several
rounds. The data is a community centre's (Organization chc-1); the benchmark client is a hospital (hosp-1) that
has every resident in its care, so each access runs the full policy: token check, scope check, care relation and
consent look-ups (in SQL for searches), and an AuditEvent queued, written and hash-chained.
"""

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

import psycopg

from app import db
from app.auth import clients, smart
from tests.benchmarks.common import ROOT, http_load, id_card, qiao_server, scratch_database
from tests.benchmarks.read_search import load, patient_id

BASELINE = "20bcaef"  # "Review: …", the FHIR core as landed, before security


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stored", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline", default=BASELINE)
    args = parser.parse_args()
    patients = args.stored // 2

    database_url = scratch_database("qiao_bench_security")
    rate = load(database_url, args.stored, org="chc-1")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO care_relation (resource_pk, patient_id, org_id)"
                     " SELECT pk, res_id, 'hosp-1' FROM resource WHERE res_type = 'Patient'")
        conn.execute("ANALYZE care_relation")
    engine = db.make_engine(database_url)
    db.set_engine(engine)
    with db.transaction() as session:
        clients.add(session, "hospital", organization="hosp-1", scope="system/*.rs",
                    jwks={"keys": [{"kty": "EC", "kid": "unused", "crv": "P-384", "x": "x", "y": "y"}]})
        token = smart.mint(session, "hospital", "hosp-1", "system/*.rs", access="organization", purpose="TREAT", lifetime=3600)
    engine.dispose()
    auth = {"Authorization": f"Bearer {token}"}
    print(f"security overhead: {args.stored} resources loaded at {rate:.0f}/s; {args.clients} clients, {args.workers} workers")

    rng = random.Random(5)

    def read_path() -> str:
        return f"/fhir/Patient/{patient_id(rng.randrange(patients) * 2)}"

    def search_path() -> str:
        return f"/fhir/Patient?identifier={quote('urn:oid:2.16.156.10011.1.3|' + id_card(rng.randrange(patients) * 2), safe='')}"

    worktree = Path(tempfile.mkdtemp(prefix="qiao-baseline-")) / "qiao"
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.baseline], cwd=ROOT, check=True, capture_output=True)
    baseline_command = [sys.executable, "-c",
                        f"from app import server; server.run('127.0.0.1', 8181, {args.workers}, 'WARNING')"]
    results: dict[tuple[str, str], list[list[float]]] = {}
    try:
        for _ in range(args.rounds):
            for name, headers in (("without", {}), ("with", auth)):
                server_options = {"source": worktree, "command": baseline_command} if name == "without" else {}
                with qiao_server(database_url, workers=args.workers, **server_options) as server:
                    for kind, paths in (("read", read_path), ("search", search_path)):
                        http_load(server.url, paths, clients=args.clients, seconds=2, headers=headers)  # warm-up
                        result = http_load(server.url, paths, clients=args.clients, seconds=args.seconds, headers=headers)
                        if result.errors:
                            raise RuntimeError(f"{name} {kind}: {result.errors} requests failed")
                        results.setdefault((name, kind), []).append(sorted(result.latencies))
                        print(f"  {name:8} {result.line(kind)}")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False)

    for kind in ("read", "search"):
        base = [x for run in results[("without", kind)] for x in run]
        secured = [x for run in results[("with", kind)] for x in run]
        p50 = statistics.median(secured) / statistics.median(base)
        p99 = _p99(secured) / _p99(base)
        rate = len(secured) / len(base)
        print(f"  {kind}: p50 {statistics.median(base) * 1000:.1f} -> {statistics.median(secured) * 1000:.1f} ms ({p50 - 1:+.0%}),"
              f" p99 {_p99(base) * 1000:.1f} -> {_p99(secured) * 1000:.1f} ms ({p99 - 1:+.0%}), requests {rate:.2f} x")


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(len(ordered) * 0.99)]


if __name__ == "__main__":
    main()

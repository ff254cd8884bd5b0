"""What authentication, the access policy and the audit trail cost on reads and searches.

    .venv/bin/python -m tests.benchmarks.security_overhead [--stored 100000] [--seconds 5] [--rounds 8] [--reuse]
                                                          [--baseline secured-unaudited|secured]

Same code, same data, same run, same load: this checkout's server with the three
switched off (QIAO_AUTH=false, so no token and no policy; and read audits dropped by a `sitecustomize` the benchmark
puts on the workers' path, since Qiao itself has no switch to stop auditing) against the same server as deployed.
The data is a community centre's (Organization chc-1); the benchmark client is a hospital (hosp-1) that has every
resident in its care, so each access runs the full policy: token check, scope check, care relation and consent
look-ups, and an AuditEvent queued, written and hash-chained.

Both servers run at once, so that every moment of the machine falls on both alike. This machine is shared and its
speed drifts: the same server under the same read load took 1,400 to 2,130 µs of CPU per request within ten minutes
(2026-12-03), and five runs on one day, which moved the load between the servers in slices of 5 s (ABBA order), gave
the saturated read p50 overhead from +1% to +27% for the same code (2026-12-07). Each server's PostgreSQL backends
are told apart by application_name (PGAPPNAME); PostgreSQL's own processes (autovacuum, WAL and checkpoints, for
both) are counted apart. "Work" is a request's CPU in its server and its PostgreSQL backends.

With `--baseline secured-unaudited` the server compared against keeps authentication and the policy and drops
only the read audits: the difference is then the audit trail's share alone. With `--baseline secured` it is the
same server as the other (an A/A run): what the benchmark shows then is its own resolution.

Each load runs in slices; each slice's p50 ratio is printed as well as the ratio of the p50s over all slices, and
their median, which one slice in which the machine stalled cannot move.

Three loads: closed-loop saturation (16 clients back to back, half on each server: the two servers' processes
share the cores, so a request's latency, mostly queueing, follows the work its server needs per request), a fixed
rate of half the saturated throughput (open loop, half of it to each server: a machine busy but not overloaded) and
a single client (one request at a time, to each server in turn: the latency of a request with no queue, which is the
cost of the work itself). At the fixed rate both servers meet the same queue, the machine's; alone at that rate, a
server whose requests need k times the work would run at k times the utilisation ρ, and its latency grow by
k(1 - ρ)/(1 - kρ) rather than k (processor sharing): +10% work at ρ = 0.5 would show as +22%.
"""

import argparse
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg

from app import db
from app.auth import clients, smart
from tests.benchmarks.common import (
    ROOT,
    LoadResult,
    cpu_seconds,
    id_card,
    load_together,
    postgres_backends,
    postgres_pids,
    qiao_server,
    scratch_database,
    url_of,
)
from tests.benchmarks.read_search import load, patient_id

DATABASE = "qiao_bench_security"
#: Seconds after a slice before its CPU is read: one audit flush (QIAO_AUDIT_FLUSH_SECONDS, 0.5) and a margin.
SETTLE = 1.0
#: Seconds of load on each server before a kind is measured: the first searches after reads ran at a third of the
#: rate with a 250 ms p99 (pages and plans not yet warm), which a 2 s warm-up left in the first slice.
WARM_UP = 8.0
#: Imported by every worker at start-up (Python's site hook): reads and searches are not audited.
NO_READ_AUDIT = "from app.auth import audit_trail\naudit_trail.record = lambda *args, **kwargs: None\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stored", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0, help="one slice")
    parser.add_argument("--rounds", type=int, default=8, help="slices per server, load and kind")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="measure the database the previous run loaded")
    parser.add_argument("--baseline", choices=("insecure", "secured-unaudited", "secured"), default="insecure",
                        help="the server without: no auth, policy or audit; auth and policy without the read audits; or"
                             " the same secured server (A/A)")
    args = parser.parse_args()
    patients = args.stored // 2

    database_url = scratch_database(DATABASE) if not args.reuse else url_of(DATABASE)
    load_rate = 0.0
    if not args.reuse:
        load_rate = load(database_url, args.stored, org="chc-1")
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("INSERT INTO care_relation (resource_pk, patient_id, org_id)"
                         " SELECT pk, res_id, 'hosp-1' FROM resource WHERE res_type = 'Patient'")
            # as on a running server, where autovacuum follows the table (migration 0020): freshly inserted rows
            # are not yet all-visible, and each policed read would fetch a heap page beside its index entry
            conn.execute("VACUUM (ANALYZE) care_relation")
    engine = db.make_engine(database_url)
    db.set_engine(engine)
    with db.transaction() as session:
        if not args.reuse:
            clients.add(session, "hospital", organization="hosp-1", scope="system/*.rs",
                        jwks={"keys": [{"kty": "EC", "kid": "unused", "crv": "P-384", "x": "x", "y": "y"}]})
        token = smart.mint(session, "hospital", "hosp-1", "system/*.rs", access="organization", purpose="TREAT", lifetime=3600)
    engine.dispose()
    auth = {"Authorization": f"Bearer {token}"}
    loaded = "reused" if args.reuse else f"loaded at {load_rate:.0f}/s"
    print(f"security overhead: {args.stored} resources {loaded}; {args.clients} clients, {args.workers} workers;"
          f" without = {args.baseline}")

    rng = random.Random(5)

    def read_path() -> str:
        return f"/fhir/Patient/{patient_id(rng.randrange(patients) * 2)}"

    def search_path() -> str:
        return f"/fhir/Patient?identifier={quote('urn:oid:2.16.156.10011.1.3|' + id_card(rng.randrange(patients) * 2), safe='')}"

    hooks = Path(tempfile.mkdtemp(prefix="qiao-no-read-audit-"))
    (hooks / "sitecustomize.py").write_text(NO_READ_AUDIT)
    unaudited = {"PYTHONPATH": f"{hooks}{os.pathsep}{ROOT}", "QIAO_MLLP_PORT": "0"}
    baseline = {"insecure": {**unaudited, "QIAO_AUTH": "false"}, "secured-unaudited": unaudited,
                "secured": {"QIAO_MLLP_PORT": "0"}}[args.baseline]
    tally = Tally()
    with (qiao_server(database_url, workers=args.workers, port=8181, env={**baseline, "PGAPPNAME": "bench-without"}) as plain,
          qiao_server(database_url, workers=args.workers, port=8182, env={"QIAO_MLLP_PORT": "0", "PGAPPNAME": "bench-with"}) as secured):
        servers = {"without": plain, "with": secured}
        targets = [(plain.url, {} if args.baseline == "insecure" else auth), (secured.url, auth)]
        for kind, paths in (("read", read_path), ("search", search_path)):
            load_together(targets, paths, clients=args.clients, seconds=WARM_UP)
            for mode in ("saturated", "steady", "single"):
                rate, load_clients = None, 1 if mode == "single" else args.clients
                if mode == "steady":  # half of what the machine served saturated, half of it to each server
                    rate = tally.rates[kind] = statistics.median(tally.saturated_rates[kind]) / 2
                for _ in range(args.rounds):
                    backends = {name: postgres_backends(database_url, f"bench-{name}") for name in NAMES}
                    every_postgres = postgres_pids()
                    before = {name: (servers[name].cpu_seconds(), cpu_seconds(backends[name])) for name in NAMES}
                    before_all = cpu_seconds(every_postgres)
                    slice_results = dict(zip(NAMES, load_together(targets, paths, clients=load_clients, seconds=args.seconds,
                                                                  rate=rate, in_turn=mode == "single"), strict=True))
                    time.sleep(SETTLE)  # the reads' audits are written (QIAO_AUDIT_FLUSH_SECONDS) within the slice's count
                    if mode == "saturated":
                        spent = {name: (servers[name].cpu_seconds() - before[name][0], cpu_seconds(backends[name]) - before[name][1])
                                 for name in NAMES}
                        tally.add_cpu(kind, slice_results, spent, cpu_seconds(every_postgres) - before_all)
                    tally.add(kind, mode, slice_results)
    tally.report()


NAMES = ("without", "with")


@dataclass
class Tally:
    """What the slices measured, by server name (NAMES), kind (read, search) and mode (saturated, steady, single)."""

    latencies: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    slice_p50s: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)  # in slice order
    saturated_rates: dict[str, list[float]] = field(default_factory=dict)  # both servers together, per slice
    rates: dict[str, float] = field(default_factory=dict)  # the fixed rate of each kind
    cpu: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # server, its PostgreSQL backends, requests
    shared_database_cpu: dict[str, float] = field(default_factory=dict)  # PostgreSQL's own processes

    def add(self, kind: str, mode: str, results: dict[str, LoadResult]) -> None:
        for name, result in results.items():
            if result.errors:
                raise RuntimeError(f"{name} {kind} {mode}: {result.errors} requests failed")
            self.latencies.setdefault((name, kind, mode), []).extend(result.latencies)
            self.slice_p50s.setdefault((name, kind, mode), []).append(statistics.median(result.latencies))
            print(f"  {name:8} {mode:9} {result.line(kind)}")

    def add_cpu(self, kind: str, results: dict[str, LoadResult], spent: dict[str, tuple[float, float]], every_postgres: float) -> None:
        """A saturated slice's CPU: each server's and its backends' (`spent`), and all of PostgreSQL's."""
        self.saturated_rates.setdefault(kind, []).append(sum(r.rate for r in results.values()))
        for name, (server, database) in spent.items():
            totals = self.cpu.setdefault((name, kind), [0.0, 0.0, 0.0])
            totals[0] += server
            totals[1] += database
            totals[2] += len(results[name].latencies)
        own = every_postgres - sum(database for _, database in spent.values())
        self.shared_database_cpu[kind] = self.shared_database_cpu.get(kind, 0.0) + own

    def report(self) -> None:
        for (name, kind), (server_cpu, database_cpu, requests) in sorted(self.cpu.items()):
            print(f"  CPU per {kind} {name + ' security':17}: server {server_cpu / requests * 1e6:.0f} µs,"
                  f" its PostgreSQL backends {database_cpu / requests * 1e6:.0f} µs (saturated slices)")
        for kind in ("read", "search"):
            work = {name: (self.cpu[(name, kind)][0] + self.cpu[(name, kind)][1]) / self.cpu[(name, kind)][2] for name in NAMES}
            print(f"  work per {kind} (server and its PostgreSQL backends): {work['without'] * 1e6:.0f} -> {work['with'] * 1e6:.0f} µs"
                  f" ({work['with'] / work['without'] - 1:+.0%})")
        for kind, spent in sorted(self.shared_database_cpu.items()):
            requests = sum(self.cpu[(name, kind)][2] for name in NAMES)
            print(f"  PostgreSQL's own processes (autovacuum, WAL, checkpoints), saturated {kind}: {spent / requests * 1e6:.0f} µs"
                  " per request of either server")
        for kind in ("read", "search"):
            for mode in ("saturated", "steady", "single"):
                base, secure = self.latencies[("without", kind, mode)], self.latencies[("with", kind, mode)]
                p50 = statistics.median(secure) / statistics.median(base)
                p99 = _p99(secure) / _p99(base)
                at = f" at {self.rates[kind]:.0f}/s (both servers)" if mode == "steady" else ""
                print(f"  {kind} {mode}{at}: p50 {statistics.median(base) * 1000:.2f} -> {statistics.median(secure) * 1000:.2f} ms"
                      f" ({p50 - 1:+.0%}), p99 {_p99(base) * 1000:.1f} -> {_p99(secure) * 1000:.1f} ms ({p99 - 1:+.0%})")
                pairs = sorted(w / o for w, o in zip(self.slice_p50s[("with", kind, mode)], self.slice_p50s[("without", kind, mode)],
                                                     strict=True))
                print(f"    p50 slice by slice: median {statistics.median(pairs) - 1:+.0%}, from {pairs[0] - 1:+.0%} to {pairs[-1] - 1:+.0%}")


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(len(ordered) * 0.99)]


if __name__ == "__main__":
    main()

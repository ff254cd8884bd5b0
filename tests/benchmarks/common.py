"""Shared benchmark plumbing: a scratch PostgreSQL database, a `qiao serve` subprocess, RSS sampling, an HTTP load loop."""

import asyncio
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from tests import builders

ADMIN_URL = os.environ.get("QIAO_BENCH_POSTGRES_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ["张", "王", "李", "赵", "刘", "陈", "杨", "黄", "周", "吴", "欧阳", "司马", "诸葛"]
GIVEN = ["伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "翠花"]
WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]


def url_of(name: str) -> str:
    """The URL of database `name` on the server of ADMIN_URL."""
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def scratch_database(name: str) -> str:
    """Drop and create a database for a benchmark; returns its URL."""
    drop_database(name)
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url_of(name)


def migrated_database(name: str) -> str:
    """A new scratch database with Qiao's schema; its URL."""
    from app import db, migrate

    url = scratch_database(name)
    engine = db.make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


#: autovacuum's rule for analysing a table: changed rows over 50 + 10% of its rows (PostgreSQL's defaults)
STALE_TABLES = ("SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
                " WHERE s.n_mod_since_analyze > 50 + 0.1 * greatest(c.reltuples, 0)")


@contextmanager
def analysing(database_url: str, every: float = 5.0) -> Iterator[None]:
    """While the block runs, if the server's autovacuum is off (as on the benchmark machine), analyse every `every`
    seconds the tables autovacuum would: it stands in for the analyses a production server makes as its tables grow,
    which replace query plans made while they were nearly empty (app/db.py)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        if conn.execute("SHOW autovacuum").fetchone() != ("off",):
            yield
            return
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                for (table,) in conn.execute(STALE_TABLES).fetchall():
                    conn.execute(f'ANALYZE "{table}"')

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def id_card(n: int) -> str:
    """A valid GB 11643 number, distinct for each n below ten million (region and sequence digits encode n)."""
    body = f"11{n // 1000 % 10000:04d}{1940 + n % 70:04d}{1 + n % 12:02d}{1 + n % 28:02d}{n % 1000:03d}"
    total = sum(int(d) * w for d, w in zip(body, WEIGHTS, strict=True)) % 11
    return body + "10X98765432"[total]


def patient(n: int, rng: random.Random) -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": "urn:oid:2.16.156.10011.1.3", "value": id_card(n)},
            {"system": "urn:oid:2.16.156.10011.1.11.99", "value": f"MZ{n:09d}"},
        ],
        "name": [{"family": rng.choice(FAMILIES), "given": [rng.choice(GIVEN)]}],
        "gender": rng.choice(["male", "female"]),
        "birthDate": f"{1940 + n % 70}-{1 + n % 12:02d}-{1 + n % 28:02d}",
        "telecom": [{"system": "phone", "value": f"138{n:08d}"}],
        "address": [{"text": "北京市东城区和平里街道", "district": "东城区", "postalCode": "100013"}],
    }


def blood_pressure(subject: str, n: int, rng: random.Random) -> dict:
    when = f"2026-{1 + n % 12:02d}-{1 + n % 28:02d}T09:{n % 60:02d}:00+08:00"
    return builders.blood_pressure(subject, rng.randint(100, 190), rng.randint(60, 115), when=when)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    rss_samples: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def pids(self) -> list[int]:
        found, stack = [], [self.process.pid]
        while stack:
            pid = stack.pop()
            found.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                    stack.extend(int(c) for c in children)
            except FileNotFoundError:
                continue
        return found

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except FileNotFoundError:
                continue
        return total

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server's processes (supervisor and workers)."""
        return cpu_seconds(self.pids())

    def connections_per_worker(self) -> list[int]:
        """Established client connections held by each worker process (from `ss`), to read a figure by."""
        port = httpx.URL(self.url).port
        try:
            out = subprocess.run(["ss", "-tnpH", "state", "established", "sport", f"= :{port}"],
                                 capture_output=True, text=True, check=False).stdout
        except FileNotFoundError:
            return []
        pids = [line.split("pid=")[1].split(",")[0] for line in out.splitlines() if "pid=" in line]
        return sorted((pids.count(p) for p in set(pids)), reverse=True)

    def sample_rss(self, interval: float = 0.25) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                self.rss_samples.append(self.rss_bytes())

        threading.Thread(target=loop, daemon=True).start()


@contextmanager
def qiao_server(database_url: str, *, workers: int = 2, port: int = 8181, source: Path = ROOT,
                command: list[str] | None = None, env: dict[str, str] | None = None) -> Iterator[Server]:
    """`qiao serve` on PostgreSQL (or `command`, run in `source`: another checkout of Qiao, for same-run baselines),
    its tables analysed as they change (`analysing`)."""
    env = {**os.environ, "QIAO_DATABASE_URL": database_url, "QIAO_LOG_LEVEL": "WARNING", "QIAO_DB_POOL_SIZE": "10",
           "PYTHONPATH": str(source), **(env or {})}
    command = command or [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", str(workers)]
    process = subprocess.Popen(command, env=env, cwd=source)
    server = Server(process, f"http://127.0.0.1:{port}/fhir")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/metadata", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        process.kill()
        raise RuntimeError("qiao serve did not start")
    try:
        with analysing(database_url):
            yield server
    finally:
        server._stop.set()
        process.terminate()
        process.wait(timeout=30)


@dataclass
class LoadResult:
    latencies: list[float]
    seconds: float
    errors: int
    client_cpu: float = 0.0  # CPU seconds the load generator itself used (it shares the machine with the server)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    def line(self, label: str) -> str:
        client = f", client CPU {self.client_cpu / self.seconds * 100:.0f}% of a core" if self.client_cpu else ""
        return (
            f"{label:<34} {self.rate:8.0f} req/s   p50 {self.percentile(50):6.2f} ms   p99 {self.percentile(99):6.2f} ms"
            f"   ({len(self.latencies)} requests, {self.errors} errors{client})"
        )


async def _client(hosts: list[tuple[str, int, str]], order: list[int], paths: Callable[[], str], until: float,
                  out: list[list[float]], errors: list[int], interval: float | None = None, first: float = 0.0) -> None:
    """One keep-alive HTTP/1.1 connection per target, issuing GETs back to back, or one every `interval` seconds from
    `first` (a minimal client, so the load costs little CPU); each request goes to the next target of `order` (indexes
    into `hosts`, `out` and `errors`). On a schedule, a request sent late because the previous one was slow counts
    from when it was due (no coordinated omission)."""
    connections = {target: await asyncio.open_connection(*hosts[target][:2]) for target in set(order)}
    due, turn = first, 0
    while time.perf_counter() < until:
        target, turn = order[turn % len(order)], turn + 1
        (host, _, extra), (reader, writer) = hosts[target], connections[target]
        request = f"GET {paths()} HTTP/1.1\r\nHost: {host}\r\nAccept: application/fhir+json\r\n{extra}\r\n".encode()
        start = time.perf_counter()
        if interval is not None:
            if due > start:
                await asyncio.sleep(due - start)
            start, due = due, due + interval
        writer.write(request)
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        out[target].append(time.perf_counter() - start)
        if b" 200 " not in status_line:
            errors[target] += 1
    for _, writer in connections.values():
        writer.close()


def http_load(url: str, paths: Callable[[], str], *, clients: int = 16, seconds: float = 15.0,
              headers: dict[str, str] | None = None, rate: float | None = None) -> LoadResult:
    """Back-to-back requests on `clients` connections (saturation), or `rate` requests a second spread over them."""
    [result] = load_together([(url, headers or {})], paths, clients=clients, seconds=seconds, rate=rate)
    return result


def load_together(targets: list[tuple[str, dict[str, str]]], paths: Callable[[], str], *, clients: int = 16,
                  seconds: float = 15.0, rate: float | None = None, in_turn: bool = True) -> list[LoadResult]:
    """`http_load` on several servers (url, headers) at once, so that every moment of the machine falls on all of
    them alike: each client sends its requests to them in turn (client i starts with server i mod n), or, not
    `in_turn`, each server has its own share of the clients. `rate` is the total; on a schedule, give each server its
    own clients, since a request taken in turn is due when the other server's was, and would be charged its lateness.
    One result per target; the load generator's CPU is split evenly between them."""
    hosts = [(url.host, url.port or 80, "".join(f"{name}: {value}\r\n" for name, value in headers.items()))
             for url, headers in ((httpx.URL(url), headers) for url, headers in targets)]
    every = list(range(len(targets)))

    def order(client: int) -> list[int]:
        first = client % len(targets)
        return every[first:] + every[:first] if in_turn else [first]

    async def run() -> list[LoadResult]:
        latencies: list[list[float]] = [[] for _ in targets]
        errors = [0] * len(targets)
        cpu = time.process_time()
        start = time.perf_counter()
        until = start + seconds
        interval = clients / rate if rate else None
        await asyncio.gather(*(_client(hosts, order(i), paths, until, latencies, errors, interval, start + (interval or 0) * i / clients)
                               for i in range(clients)))
        elapsed, client_cpu = time.perf_counter() - start, (time.process_time() - cpu) / len(targets)
        return [LoadResult(found, elapsed, failed, client_cpu) for found, failed in zip(latencies, errors, strict=True)]

    return asyncio.run(run())


def threaded_rate(work: Callable[[int], None], *, threads: int, seconds: float) -> LoadResult:
    """Run work(i) from several threads for a while; used for the database baselines."""
    latencies: list[float] = []
    lock = threading.Lock()
    until = time.perf_counter() + seconds

    def loop(worker: int) -> None:
        local, i = [], 0
        while time.perf_counter() < until:
            start = time.perf_counter()
            work(worker * 10_000_000 + i)
            local.append(time.perf_counter() - start)
            i += 1
        with lock:
            latencies.extend(local)

    begin = time.perf_counter()
    pool = [threading.Thread(target=loop, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return LoadResult(latencies, time.perf_counter() - begin, 0)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes, from /proc (processes gone meanwhile count nothing)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    """Every PostgreSQL process on the machine (the server shares it with nothing else while a benchmark runs)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "postgres":
                found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def postgres_backends(database_url: str, application_name: str) -> list[int]:
    """The PostgreSQL backends serving connections of this application_name (a server started with PGAPPNAME set,
    which libpq reads), to tell apart the database's work for each of two servers run at once."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application_name,)).fetchall()
    return [pid for (pid,) in rows]


def mib(value: float) -> str:
    return f"{value / 2**20:.0f} MiB"


def median(values: list[float]) -> float:
    return statistics.median(values)


def operator_token(database_url: str, scope: str = "system/*.cruds") -> dict[str, str]:
    """An Authorization header from `qiao token` (the local operator), as the README shows."""
    env = {**os.environ, "QIAO_DATABASE_URL": database_url, "QIAO_LOG_LEVEL": "WARNING"}
    minted = subprocess.run([sys.executable, "-m", "app.cli", "token", "--scope", scope], env=env, cwd=ROOT,
                            capture_output=True, text=True, check=True)
    return {"Authorization": f"Bearer {minted.stdout.split()[-1]}"}


def renewed_operator_token(database_url: str, every: float = 240.0) -> Callable[[], dict[str, str]]:
    """The operator's Authorization header, minted again every `every` seconds (tokens last 5 minutes), for runs
    longer than a token."""
    lock = threading.Lock()
    header, minted_at = operator_token(database_url), time.monotonic()

    def current() -> dict[str, str]:
        nonlocal header, minted_at
        with lock:
            if time.monotonic() - minted_at > every:
                header, minted_at = operator_token(database_url), time.monotonic()
            return header

    return current


def post_concurrently(url: str, bodies: list[bytes], *, clients: int, headers: Callable[[], dict[str, str]],
                      on_response: Callable[[int, httpx.Response], None], on_start: Callable[[], None] | None = None) -> float:
    """POST each FHIR JSON body from `clients` keep-alive connections; `on_response(body index, response)` is called
    under a lock; `on_start` a second after the start (to see how the connections spread). → seconds taken."""
    queue = list(reversed(range(len(bodies))))
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(timeout=300) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    index = queue.pop()
                response = http.post(url, content=bodies[index], headers={"Content-Type": "application/fhir+json", **headers()})
                with lock:
                    on_response(index, response)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    if on_start is not None:
        time.sleep(1)
        on_start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start

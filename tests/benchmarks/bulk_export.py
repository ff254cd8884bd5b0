"""Bulk Data export of a large store: resources/s, time to the first file, peak server memory; against the rate at
which PostgreSQL itself can hand out the same stored JSON (COPY TO STDOUT), measured in the same run.

    .venv/bin/python -m tests.benchmarks.bulk_export [--resources 1000000] [--workers 2] [--reuse]

The store is seeded directly in SQL (a fifth Patients, the rest blood-pressure Observations of about 1 KB, with
their `resource` rows as the store writes them; no search index, which a plain export does not use), since loading
a million resources through the API would take the benchmark's whole time. The export runs on `qiao serve` (two
workers by default) and PostgreSQL, as the CDC would pull it: kick-off, polling as `Retry-After` says, then every file
downloaded over HTTP and its lines counted.
"""

import argparse
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson
import psycopg

from app import db
from app.auth import clients, smart
from tests.benchmarks.common import mib, migrated_database, operator_token, qiao_server, url_of
from tests.builders import blood_pressure, patient

DATABASE = "qiao_bench_bulk"


def seed(url: str, total: int) -> None:
    patients = total // 5
    observations = total - patients
    stamp = "2026-06-01T08:00:00.000Z"
    person = patient("王", "芳", id_card="11010519491231002X", meta={"versionId": "1", "lastUpdated": stamp},
                     telecom=[{"system": "phone", "value": "13800000000"}],
                     address=[{"text": "北京市东城区和平里街道", "district": "东城区", "postalCode": "100013"}])
    reading = blood_pressure("Patient/x") | {"meta": {"versionId": "1", "lastUpdated": stamp}}
    with psycopg.connect(url, autocommit=True) as conn:
        for kind, count, template, offset in (("Patient", patients, person, 0), ("Observation", observations, reading, patients)):
            conn.execute(
                "INSERT INTO resource (pk, res_type, res_id, version_id, last_updated, deleted, org, patient)"
                " SELECT g + %(offset)s, %(kind)s::text, lower(left(%(kind)s::text, 1)) || g, 1, %(at)s::timestamptz, false, 'chc-1',"
                " 'p' || (CASE WHEN %(kind)s::text = 'Patient' THEN g ELSE 1 + g %% %(patients)s END)"
                " FROM generate_series(1, %(count)s) g",
                {"offset": offset, "kind": kind, "count": count, "at": stamp, "patients": patients})
            conn.execute(
                "INSERT INTO resource_version (resource_pk, version_id, res_type, res_id, last_updated, method, deleted, content)"
                " SELECT g + %(offset)s, 1, %(kind)s::text, lower(left(%(kind)s::text, 1)) || g, %(at)s::timestamptz, 'POST', false,"
                " jsonb_set(%(template)s::jsonb, '{id}', to_jsonb(lower(left(%(kind)s::text, 1)) || g))"
                "   || CASE WHEN %(kind)s::text = 'Observation' THEN jsonb_build_object('subject',"
                "        jsonb_build_object('reference', 'Patient/p' || (1 + g %% %(patients)s))) ELSE '{}'::jsonb END"
                " FROM generate_series(1, %(count)s) g",
                {"offset": offset, "kind": kind, "count": count, "at": stamp, "patients": patients,
                 "template": orjson.dumps(template).decode()})
        conn.execute("SELECT setval(pg_get_serial_sequence('resource', 'pk'), %s)", (total,))
        conn.execute("VACUUM ANALYZE resource")
        conn.execute("VACUUM ANALYZE resource_version")


def copy_rate(url: str) -> tuple[float, int]:
    """PostgreSQL's own rate for the same rows: COPY of the current versions' JSON as text to the client (the
    audit trail of earlier runs left out, as the export leaves it out for a scope that does not name it)."""
    with psycopg.connect(url) as conn:
        count = int(conn.execute("SELECT count(*) FROM resource WHERE res_type <> 'AuditEvent'").fetchone()[0])  # type: ignore[index]
    started = time.perf_counter()
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        with cursor.copy("COPY (SELECT CAST(v.content AS TEXT) FROM resource r JOIN resource_version v"
                         " ON v.resource_pk = r.pk AND v.version_id = r.version_id"
                         " WHERE r.res_type <> 'AuditEvent') TO STDOUT") as copy:
            for _block in copy:
                pass
    return count / (time.perf_counter() - started), count


def hospital(url: str) -> tuple[dict[str, str], int]:
    """A hospital's client (policy: the residents in its care, every second one here) and what it may see."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM care_relation")
        conn.execute("INSERT INTO care_relation (resource_pk, patient_id, org_id)"
                     " SELECT pk, res_id, 'hosp-1' FROM resource WHERE res_type = 'Patient' AND pk % 2 = 0")
        conn.execute("ANALYZE care_relation")
        visible = int(conn.execute("SELECT count(*) FROM resource r WHERE r.res_type <> 'AuditEvent' AND EXISTS"
                                   " (SELECT 1 FROM care_relation c WHERE c.patient_id = r.patient)").fetchone()[0])  # type: ignore[index]
    engine = db.make_engine(url)
    db.set_engine(engine)
    with db.transaction() as session:
        clients.add(session, "hospital", organization="hosp-1", scope="system/*.rs",
                    jwks={"keys": [{"kty": "EC", "kid": "unused", "crv": "P-384", "x": "x", "y": "y"}]})
        token = smart.mint(session, "hospital", "hosp-1", "system/*.rs", access="organization", purpose="TREAT", lifetime=3600)
    engine.dispose()
    return {"Authorization": f"Bearer {token}"}, visible


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resources", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help=f"keep the seeded database {DATABASE} from an earlier run")
    parser.add_argument("--as-hospital", action="store_true",
                        help="export as a hospital's client under the institution policy; it cares for every second resident")
    args = parser.parse_args()
    url = url_of(DATABASE)
    if not args.reuse:
        url = migrated_database(DATABASE)
        started = time.perf_counter()
        seed(url, args.resources)
        print(f"seeded {args.resources:,} resources in SQL in {time.perf_counter() - started:.0f} s")
    baseline, count = copy_rate(url)
    print(f"baseline: PostgreSQL COPY of the stored JSON  {baseline:,.0f} resources/s")
    if args.as_hospital:
        headers, count = hospital(url)
        print(f"as a hospital's client: {count:,} of the resources are its residents'")
    else:
        headers = operator_token(url, "system/*.rs")

    data_dir = Path(tempfile.mkdtemp(prefix="qiao-bench-bulk-"))
    with qiao_server(url, workers=args.workers, env={"QIAO_DATA_DIR": str(data_dir)}) as server:
        idle = server.rss_bytes()
        server.sample_rss(0.1)
        started = time.perf_counter()
        kick = httpx.get(f"{server.url}/$export", headers={**headers, "Prefer": "respond-async"}, timeout=60)
        assert kick.status_code == 202, kick.text
        location = kick.headers["Content-Location"]
        first_file: list[float] = []
        threading.Thread(target=_watch_first_file, args=(data_dir, started, first_file), daemon=True).start()
        while True:
            status = httpx.get(location, headers=headers, timeout=60)
            if status.status_code != 202:
                break
            time.sleep(float(status.headers.get("Retry-After", "1")))
        exported = time.perf_counter() - started
        assert status.status_code == 200, status.text
        manifest = status.json()
        peak = max(server.rss_samples or [idle])
        download_started = time.perf_counter()
        lines = 0
        with httpx.Client(headers=headers, timeout=120) as client:
            for item in manifest["output"]:
                with client.stream("GET", item["url"]) as response:
                    for chunk in response.iter_bytes():
                        lines += chunk.count(b"\n")
        downloaded = time.perf_counter() - download_started
    files = len(manifest["output"])
    listed = sum(item["count"] for item in manifest["output"])
    assert listed == lines == count, (listed, lines, count)
    rate = count / exported
    print(f"export: {count:,} resources in {files} files, {exported:.1f} s → {rate:,.0f} resources/s"
          f" ({rate / baseline:.2f}× COPY); first file after {first_file[0] if first_file else float('nan'):.1f} s")
    print(f"download over HTTP: {count / downloaded:,.0f} resources/s")
    print(f"server memory ({args.workers} worker(s) and the supervisor): idle {mib(idle)}, peak {mib(peak)} (+{mib(peak - idle)})")


def _watch_first_file(data_dir: Path, started: float, found: list[float]) -> None:
    while not found and time.perf_counter() - started < 3600:
        if any(data_dir.glob("bulk/*/output-*.ndjson")):
            found.append(time.perf_counter() - started)
            return
        time.sleep(0.05)


if __name__ == "__main__":
    main()

"""`$evaluate-measure` for a district of managed residents (target: 100,000 under 5 s), through HTTP on `qiao serve`
and PostgreSQL; against a baseline measured in the same run: PostgreSQL handing the same rows to the client
(every registry entry's JSON and every follow-up's date), with no logic at all.

    .venv/bin/python -m tests.benchmarks.indicators [--residents 100000] [--reuse]

The store is seeded directly (COPY), with the rows the store itself would write: each resident is a master and a
source Patient linked in the master patient index, a diagnosis and an enrolment at one of 50 centres in 5
districts, its registry entry (derived by `registries.entry`), and four follow-up Encounters in the year (some by
phone) each with a blood-pressure reading; index rows from `indexing.index_rows`. 13 resources a resident. The
indicators' tables get the rows the write rules would derive (`registries.span_rows`, `followups.row`).
"""

import argparse
import io
import random
import statistics
import time
from datetime import datetime
from typing import Any

import httpx
import orjson
import psycopg

from app.cdc import followups, registries
from app.cdc.registries import Person
from app.cdc.tables import indicator_followup, registry_span
from app.config import get_settings
from app.store import indexing
from tests.benchmarks.common import migrated_database, operator_token, patient, qiao_server, url_of
from tests.cdc.builders import condition, enrolment, followup, organization

DATABASE = "qiao_bench_indicators"
ZONE = "Asia/Shanghai"
STAMP = "2026-01-15T08:00:00+08:00"
DISTRICTS = ["330102", "330105", "330106", "330108", "330109"]
CENTRES = 50
MEASURES = ["htn-control-rate", "htn-standardized-management-rate"]
YEAR = "periodStart=2025-01-01&periodEnd=2025-12-31"


COLUMNS = {"resource": "pk, res_type, res_id, version_id, last_updated, deleted, org, patient",
           "resource_version": "resource_pk, version_id, res_type, res_id, last_updated, method, deleted, content",
           "search_token": "resource_pk, res_type, param, system, code",
           "search_string": "resource_pk, res_type, param, value_norm, value_exact",
           "search_date": "resource_pk, res_type, param, low, high",
           "search_reference": "resource_pk, res_type, param, target_type, target_id",
           "mpi_record": "patient_id, master_id, org, features, basis, updated_at",
           "registry_span": ", ".join(c.name for c in registry_span.columns),
           "indicator_followup": ", ".join(c.name for c in indicator_followup.columns)}


class Loader:
    """Rows for COPY, as the store writes them (resource, its version, its index rows)."""

    def __init__(self) -> None:
        self.pk = 0
        self.tables: dict[str, io.StringIO] = {name: io.StringIO() for name in (
            "resource", "resource_version", "search_token", "search_string", "search_date", "search_reference", "mpi_record",
            "registry_span", "indicator_followup")}
        self.zone = get_settings().zone

    def add(self, content: dict[str, Any], *, patient: str | None, org: str | None) -> None:
        self.pk += 1
        content = content | {"meta": (content.get("meta") or {}) | {"versionId": "1", "lastUpdated": STAMP}}
        kind, res_id = content["resourceType"], content["id"]
        self._row("resource", self.pk, kind, res_id, 1, STAMP, "f", org, patient)
        self._row("resource_version", self.pk, 1, kind, res_id, STAMP, "POST", "f", orjson.dumps(content).decode())
        for table, rows in indexing.index_rows(content, zone=self.zone).items():
            for row in rows:
                self._row(f"search_{table}", self.pk, *row.values())

    def link(self, patient_id: str, master_id: str, org: str) -> None:
        self._row("mpi_record", patient_id, master_id, org, "{}", "new", STAMP)

    def derived(self, table: str, row: dict[str, Any]) -> None:
        """A row of the indicators' tables (app/cdc/tables.py), in their columns' order."""
        self._row(table, *(row[column] for column in COLUMNS[table].split(", ")))

    def _row(self, table: str, *values: Any) -> None:
        text = "\t".join("\\N" if v is None else str(v).replace("\\", "\\\\").replace("\t", " ").replace("\n", " ") for v in values)
        self.tables[table].write(text + "\n")

    def copy(self, conn: psycopg.Connection[Any]) -> None:
        for table, buffer in self.tables.items():
            with conn.cursor().copy(f"COPY {table} ({COLUMNS[table]}) FROM STDIN") as copy:
                copy.write(buffer.getvalue())
            self.tables[table] = io.StringIO()


def seed(url: str, count: int) -> None:
    rng = random.Random(11)
    loader = Loader()
    organizations = {f"chc-{k}": organization(f"chc-{k}", f"社区卫生服务中心{k}", DISTRICTS[k % len(DISTRICTS)]) for k in range(CENTRES)}
    for content in organizations.values():
        loader.add(content, patient=None, org=None)
    now = datetime.fromisoformat(STAMP)
    with psycopg.connect(url, autocommit=True) as conn:
        for n in range(count):
            centre = f"chc-{n % CENTRES}"
            master, source = f"m{n}", f"s{n}"
            record = patient(n, rng)
            loader.add(record | {"id": master, "meta": {"tag": [{"system": "urn:qiao:mpi", "code": "master"}]}}, patient=master, org=None)
            loader.add(record | {"id": source}, patient=source, org=centre)
            loader.link(source, master, centre)
            diagnosis = condition(source) | {"id": f"c{n}"}
            enrolled = enrolment(source, centre, "2024-01-01") | {"id": f"e{n}"}
            loader.add(diagnosis, patient=source, org=centre)
            loader.add(enrolled, patient=source, org=centre)
            master_record = record | {"id": master}
            person = Person(master, [master_record, record | {"id": source}], [diagnosis], [enrolled], {})
            entry = registries.entry(registries.REGISTRIES["hypertension-registry"], person, organizations, now)
            loader.add(entry, patient=master, org=None)
            for span in registries.span_rows(registries.REGISTRIES["hypertension-registry"], person):
                loader.derived("registry_span", span)
            for quarter in range(4):
                day = f"2025-{3 * quarter + 2:02d}-{1 + n % 28:02d}"
                mode = "VR" if rng.random() < 0.1 else "AMB"
                bundle = followup(source, day, mode=mode, bp=(rng.randint(110, 170), rng.randint(65, 100)))
                encounter_id = f"f{n}-{quarter}"
                encounter = bundle["entry"][0]["resource"] | {"id": encounter_id}
                reading = bundle["entry"][1]["resource"] | {"id": f"o{n}-{quarter}", "encounter": {"reference": f"Encounter/{encounter_id}"}}
                loader.add(encounter, patient=source, org=centre)
                row = followups.row(encounter, source, [reading])
                assert row is not None
                loader.derived("indicator_followup", row | {"encounter_pk": loader.pk})
                loader.add(reading, patient=source, org=centre)
            if n % 5_000 == 4_999:
                loader.copy(conn)
        loader.copy(conn)
        conn.execute("SELECT setval(pg_get_serial_sequence('resource', 'pk'), %s)", (loader.pk,))
        for table in loader.tables:
            conn.execute(f"VACUUM ANALYZE {table}")


def baseline(url: str) -> float:
    """Seconds PostgreSQL takes to hand the client every registry entry's JSON and every follow-up's date."""
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        for statement in (
            "SELECT r.patient, CAST(v.content AS TEXT) FROM resource r JOIN resource_version v"
            " ON v.resource_pk = r.pk AND v.version_id = r.version_id WHERE r.res_type = 'EpisodeOfCare' AND r.res_id LIKE 'hypertension-registry-%'",
            "SELECT r.patient, d.low FROM resource r JOIN search_date d ON d.resource_pk = r.pk AND d.param = 'date'"
            " WHERE r.res_type = 'Encounter'",
        ):
            conn.execute(statement).fetchall()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--residents", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help=f"keep the seeded database {DATABASE} from an earlier run")
    args = parser.parse_args()
    url = url_of(DATABASE)
    if not args.reuse:
        url = migrated_database(DATABASE)
        started = time.perf_counter()
        seed(url, args.residents)
        print(f"seeded {args.residents:,} managed residents ({13 * args.residents:,} resources) in {time.perf_counter() - started:.0f} s")
    headers = operator_token(url, "system/*.rs")
    with qiao_server(url, workers=1) as server, httpx.Client(headers=headers, timeout=600) as client:
        for query, label in ((YEAR, "summary"), (YEAR + "&reportType=subject-list", "subject-list")):
            for measure in MEASURES:
                times, report = [], {}
                base = statistics.median(baseline(url) for _ in range(args.rounds))
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    response = client.get(f"{server.url}/Measure/{measure}/$evaluate-measure?{query}")
                    times.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
                    report = response.json()
                populations = {p["code"]["coding"][0]["code"]: p["count"] for p in report["group"][0]["population"]}
                took = statistics.median(times)
                print(f"{measure:34} {label:12} denominator {populations['denominator']:,} numerator {populations['numerator']:,}"
                      f"  {took:.2f} s (median of {args.rounds}; {took / base:.1f}× the baseline's {base:.2f} s)")


if __name__ == "__main__":
    main()

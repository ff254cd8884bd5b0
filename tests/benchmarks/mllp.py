"""MLLP benchmark: HL7 v2 over a real socket into PostgreSQL, end to end (stored raw, parsed, mapped, applied with
Provenance, acknowledged), with a same-run baseline.

    .venv/bin/python -m tests.benchmarks.mllp [--patients 2000] [--results 3] [--connections 8] [--workers 2]

First every patient is registered by ADT^A04 (each goes through resident matching), then each gets `--results`
ORU^R01 messages of 10 OBX (10 Observations, a DiagnosticReport, a Provenance). Each connection sends a message and
waits for its ACK before the next, as MLLP senders do; the figure is messages/s over all connections and the ACK
latency, and what an ORU^R01 costs in CPU: the server's processes, PostgreSQL's and this client's (with both cores
busy, their sum bounds the rate). Baseline, same run: psycopg inserts of the same number of rows an ORU^R01 writes
(its 12 resources as JSON), one transaction per message, one connection.
"""

import argparse
import asyncio
import random
import socket
import time
import uuid

import orjson
import psycopg

from adapters.hl7v2 import mllp
from tests.benchmarks.common import cpu_seconds, id_card, median, mib, postgres_pids, qiao_server, scratch_database

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华"
RESULTS = [("SBP", "收缩压", "150", "mmHg"), ("DBP", "舒张压", "95", "mmHg"), ("HR", "心率", "78", "次/分"),
           ("WT", "体重", "70.5", "kg"), ("HT", "身高", "170", "cm"), ("BMI", "体重指数", "24.4", "kg/m2"),
           ("GLU", "空腹血糖", "7.8", "mmol/L"), ("HBA1C", "糖化血红蛋白", "6.9", "%"), ("TC", "总胆固醇", "5.2", "mmol/L"),
           ("TG", "甘油三酯", "1.7", "mmol/L")]


def admission(n: int, rng: random.Random) -> bytes:
    name = f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}{rng.choice(GIVEN)}"
    born = f"19{rng.randint(30, 89)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    return "\r".join([
        f"MSH|^~\\&|HIS|DCH|QIAO|QIAO|20261120093000||ADT^A04^ADT_A01|ADT{n:07d}|P|2.4||||||GB18030",
        "EVN|A04|20261120093000",
        f"PID|1||MZ{n:07d}^^^DCH^MR~{id_card(n)}^^^^NNCHN||{name}||{born}|{1 + n % 2}|||和平里街道{n % 300}号^^北京市^北京市^100013^^^^东城区"
        f"||139{n:08d}",
        f"PV1|1|O|内科^^^DCH||||||||||||||||V{n:07d}|||||||||||||||||||||||||20261120090000",
    ]).encode("gb18030") + b"\r"


def result(n: int, k: int, rng: random.Random) -> bytes:
    segments = [
        f"MSH|^~\\&|LIS|DCH|QIAO|QIAO|20261120101500||ORU^R01^ORU_R01|LAB{n:07d}{k:02d}|P|2.5.1||||||GB18030",
        f"PID|1||MZ{n:07d}^^^DCH^MR||张^三||19491231|1",
        f"OBR|1||R{n:07d}{k:02d}|LAB01^慢病随访检查|||20261120100000||||||||||||||||F",
    ]
    for i, (code, name, value, unit) in enumerate(RESULTS, start=1):
        segments.append(f"OBX|{i}|NM|{code}^{name}||{float(value) + rng.randint(-5, 5) / 10:.1f}|{unit}|||||F|||20261120100000")
    return "\r".join(segments).encode("gb18030") + b"\r"


async def send_all(port: int, messages: list[bytes], connections: int) -> tuple[float, list[float], list[bytes]]:
    """Every message over `connections` connections, each sending one and awaiting its ACK; (seconds, latencies, ACKs)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)
    latencies: list[float] = []
    acks: list[bytes] = []

    async def sender() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=mllp.MAX_MESSAGE)
        try:
            while not queue.empty():
                message = queue.get_nowait()
                start = time.perf_counter()
                writer.write(mllp.frame(message))
                await writer.drain()
                reply = await mllp.read_message(reader)
                latencies.append(time.perf_counter() - start)
                acks.append(reply or b"")
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(connections)))
    return time.perf_counter() - start, latencies, acks


def accepted(acks: list[bytes]) -> int:
    return sum(b"MSA|AA|" in ack for ack in acks)


def raw_insert_rate(database_url: str, messages: int, rows_per_message: int) -> float:
    """Messages/s when each message is `rows_per_message` JSON rows inserted in one transaction."""
    row = orjson.dumps({"resourceType": "Observation", "status": "final", "code": {"text": "收缩压"},
                        "valueQuantity": {"value": 150, "unit": "mmHg"}}).decode()
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE bare (id text PRIMARY KEY, content jsonb NOT NULL)")
        conn.commit()
        start = time.perf_counter()
        for _ in range(messages):
            with conn.cursor() as cursor:
                cursor.executemany("INSERT INTO bare (id, content) VALUES (%s, %s)",
                                   [(str(uuid.uuid4()), row) for _ in range(rows_per_message)])
            conn.commit()
        return messages / (time.perf_counter() - start)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--results", type=int, default=3, help="ORU^R01 messages per patient")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rng = random.Random(5)
    admissions = [admission(n, rng) for n in range(args.patients)]
    results = [result(n, k, rng) for k in range(args.results) for n in range(args.patients)]
    print(f"mllp: {len(admissions)} ADT^A04 then {len(results)} ORU^R01 (10 OBX), {args.connections} connections, "
          f"{args.workers} workers, PostgreSQL, GB18030")

    database_url = scratch_database("qiao_bench_mllp")
    port = free_port()
    with qiao_server(database_url, workers=args.workers, env={"QIAO_MLLP_PORT": str(port)}) as server:
        server.sample_rss()
        adt_seconds, adt_latencies, adt_acks = asyncio.run(send_all(port, admissions, args.connections))
        before = server.cpu_seconds(), cpu_seconds(postgres_pids()), time.process_time()
        oru_seconds, oru_latencies, oru_acks = asyncio.run(send_all(port, results, args.connections))
        oru_cpu = [(after - start) / len(results) for after, start in
                   zip((server.cpu_seconds(), cpu_seconds(postgres_pids()), time.process_time()), before, strict=True)]
        peak_rss = max(server.rss_samples or [server.rss_bytes()])
    with psycopg.connect(database_url) as conn:
        observations = conn.execute("SELECT count(*) FROM resource WHERE res_type = 'Observation' AND NOT deleted").fetchone()
        states = dict(conn.execute("SELECT state, count(*) FROM inbound_message GROUP BY state").fetchall())

    baseline = raw_insert_rate(scratch_database("qiao_bench_mllp_raw"), min(len(results), 5000), 12)
    oru_rate, adt_rate = len(results) / oru_seconds, len(admissions) / adt_seconds
    for label, rate, seconds, latencies, acks in (("ADT^A04", adt_rate, adt_seconds, adt_latencies, adt_acks),
                                                  ("ORU^R01", oru_rate, oru_seconds, oru_latencies, oru_acks)):
        print(f"  {label}   {rate:7.0f} messages/s ({seconds:.1f} s; {accepted(acks)}/{len(acks)} AA)  ACK latency "
              f"p50 {median(latencies) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms")
    print(f"  CPU per ORU^R01: server {oru_cpu[0] * 1000:.2f} ms, PostgreSQL {oru_cpu[1] * 1000:.2f} ms,"
          f" the senders {oru_cpu[2] * 1000:.2f} ms (two cores: {2 / sum(oru_cpu):.0f} messages/s at most)")
    print(f"  raw psycopg, 12 rows per transaction: {baseline:7.0f} messages/s   ORU^R01 = {oru_rate / baseline:.2f} x raw insert")
    print(f"  stored: {observations[0] if observations else 0} Observations; inbound messages by state {states}")
    print(f"  server RSS peak (all processes) {mib(peak_rss)}")


if __name__ == "__main__":
    main()

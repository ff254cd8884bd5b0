"""`qiao serve` on the embedded default (SQLite in QIAO_DATA_DIR): migrates, serves, stops; also with two workers."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_on_the_embedded_default(tmp_path: Path, workers: int) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QIAO_")} | {"QIAO_DATA_DIR": str(tmp_path / "var")}
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/metadata", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("qiao serve did not answer")
        assert httpx.get(f"{base}/Patient").status_code == 401
        minted = subprocess.run([sys.executable, "-m", "app.cli", "token", "--scope", "system/*.cruds"], env=env,
                                capture_output=True, text=True, check=True)
        auth = {"Authorization": f"Bearer {minted.stdout.split()[-1]}"}
        created = httpx.post(f"{base}/Patient", json={"resourceType": "Patient", "gender": "female"},
                             headers={"Content-Type": "application/fhir+json", **auth})
        assert created.status_code == 201
        assert httpx.get(f"{base}/Patient/{created.json()['id']}", headers=auth).status_code == 200
        assert (tmp_path / "var" / "qiao.sqlite3").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert "11010519" not in output  # nothing personal in the logs


def test_serve_without_auth_refuses_a_public_address(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QIAO_")} | {"QIAO_DATA_DIR": str(tmp_path), "QIAO_AUTH": "false"}
    result = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "loopback" in result.stderr


def test_ingest_list_the_failed_and_replay_them(tmp_path: Path) -> None:
    from tests.ingest.messages import adt, oru

    env = {**os.environ, "QIAO_DATA_DIR": str(tmp_path), "QIAO_LOG_LEVEL": "WARNING"}
    feed = tmp_path / "feed.hl7"
    feed.write_bytes("\n".join([adt(), adt(control_id="MSG0002", mrn="MZ1002", sex="7"), oru()]).encode("gb18030"))

    def qiao(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=120)

    ingested = qiao("ingest", str(feed), "--source", "dongcheng-hospital")
    assert ingested.returncode == 1 and ingested.stdout.split() == ["failed", "1", "processed", "2"]
    listed = qiao("messages", "list", "--failed").stdout.strip().splitlines()
    assert len(listed) == 1 and "PID-8" in listed[0] and "sex" in listed[0]
    replayed = qiao("messages", "replay", listed[0].split("\t")[0])
    assert replayed.returncode == 1 and "PID-8" in replayed.stdout  # the code table is still unfixed: still failed


def test_ingest_an_export_whose_kind_its_name_gives_or_the_operator_names(tmp_path: Path) -> None:
    import orjson

    from tests.ingest.test_rows import followup

    env = {**os.environ, "QIAO_DATA_DIR": str(tmp_path), "QIAO_LOG_LEVEL": "WARNING"}
    forms = tmp_path / "hypertension-2026-03.jsonl"
    forms.write_bytes(orjson.dumps(followup()) + b"\n" + orjson.dumps(followup(form_id="HTN-2", classification="9")) + b"\n")
    unnamed = tmp_path / "export.json"
    unnamed.write_bytes(orjson.dumps([followup(form_id="HTN-3")]))

    def qiao(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=120)

    ingested = qiao("ingest", str(forms), "--source", "hepingli-public-health")
    assert ingested.returncode == 1 and ingested.stdout.split() == ["failed", "1", "processed", "1"]
    assert "classification" in ingested.stderr and "followup_classification" in ingested.stderr
    refused = qiao("ingest", str(unnamed), "--source", "hepingli-public-health")
    assert refused.returncode == 2 and "which kind of export" in refused.stderr
    named = qiao("ingest", str(unnamed), "--source", "hepingli-public-health", "--kind", "hypertension-followup")
    assert named.returncode == 0 and named.stdout.split() == ["processed", "1"]


def test_demo_plays_a_community_s_feeds_and_links_each_resident_once(tmp_path: Path) -> None:
    env = {**os.environ, "QIAO_DATA_DIR": str(tmp_path), "QIAO_LOG_LEVEL": "WARNING"}
    result = subprocess.run([sys.executable, "-m", "app.cli", "demo", "--out", str(tmp_path / "feeds"), "--residents", "12"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "36 source Patient records of 12 residents → 12 master residents, 0 pairs for review" in result.stdout
    assert (tmp_path / "feeds" / "dongcheng-hospital" / "admissions-and-results.hl7").read_bytes().decode("gb18030").startswith("MSH|")
    assert "failed" not in result.stdout

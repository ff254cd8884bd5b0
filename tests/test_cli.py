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
        created = httpx.post(f"{base}/Patient", json={"resourceType": "Patient", "gender": "female"},
                             headers={"Content-Type": "application/fhir+json"})
        assert created.status_code == 201
        assert httpx.get(f"{base}/Patient/{created.json()['id']}").status_code == 200
        assert (tmp_path / "var" / "qiao.sqlite3").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert "11010519" not in output  # nothing personal in the logs

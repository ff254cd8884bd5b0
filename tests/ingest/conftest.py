"""Fixtures of the ingest tests."""

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from sqlalchemy import Engine

from app.config import get_settings
from app.main import create_app


@pytest.fixture
def mllp_server(app_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The app with its MLLP listener, as `qiao serve` runs it, on free ports."""
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    monkeypatch.setattr(get_settings(), "mllp_port", ports[1])
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=ports[0], log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield ports[1]
    server.should_exit = True
    thread.join(timeout=10)

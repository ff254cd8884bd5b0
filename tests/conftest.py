"""Every test that takes `client` (or `engine`) runs on SQLite and on PostgreSQL, against a schema built by alembic.

PostgreSQL is the `test` database on 127.0.0.1 (QIAO_TEST_POSTGRES_URL); each test worker has its own schema.
Without a reachable PostgreSQL those runs are skipped, unless QIAO_TEST_REQUIRE_POSTGRES=1 (CI) makes it a failure.
Tests commit for real (conditional create is tested under concurrency), and tables are emptied after each test.
"""

import logging
import os
import tempfile

os.environ.setdefault("QIAO_MLLP_PORT", "0")  # no MLLP listener in test apps, unless a test asks for one
os.environ.setdefault("QIAO_BULK_POLL_SECONDS", "0.05")  # exports start at once
os.environ.setdefault("QIAO_BULK_RETRY_AFTER_SECONDS", "0")  # and may be polled without waiting

os.environ.setdefault("QIAO_DATA_DIR", tempfile.mkdtemp(prefix="qiao-test-data-"))  # export files

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app import db, migrate
from app import logging as qiao_logging
from app.auth import audit_trail, smart
from app.auth.principal import UNRESTRICTED
from app.config import get_settings
from app.main import create_app
from tests import builders

POSTGRES_URL = os.environ.get("QIAO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("QIAO_TEST_REQUIRE_POSTGRES") == "1"
TABLES = (
    "referral_deadline", "clock_pass", "registry_span", "indicator_followup", "bulk_patient", "bulk_file", "bulk_job", "subscription_event", "subscription_resend", "subscription_state", "referral_transition",
    "mpi_block", "mpi_census", "mpi_record", "mpi_review", "mpi_distinct", "mpi_link_event", "inbound_message", "audit_chain", "audit_pending", "care_relation", "consent_denial", "auth_jti", "auth_client",
    "search_reference", "search_date", "search_string", "search_token", "resource_version", "resource",
)


def _postgres_engine(worker: str) -> Engine:
    schema = f"qiao_test_{worker}"
    admin = db.make_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no PostgreSQL here"
        if REQUIRE_POSTGRES:
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {type(exc).__name__}")
    finally:
        admin.dispose()
    separator = "&" if "?" in POSTGRES_URL else "?"
    return db.make_engine(f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}", pool_size=20)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[Engine]:
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("sqlite") / "qiao.sqlite3"
        engine = db.make_engine(f"sqlite:///{path}")
    else:
        engine = _postgres_engine(worker_id)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def app_engine(engine: Engine) -> Iterator[Engine]:
    db.set_engine(engine)
    audit_trail.queue.take(10**9)
    yield engine
    audit_trail.queue.take(10**9)
    with engine.begin() as conn:
        for table in TABLES:
            conn.execute(text(f"DELETE FROM {table}"))


def operator_token(scope: str = "system/*.cruds") -> str:
    """A token of the local operator (unrestricted, as `qiao token` mints): the FHIR core's tests run through auth."""
    with db.transaction() as session:
        return smart.mint(session, "operator", None, scope, access=UNRESTRICTED, purpose="TREAT", lifetime=300)


@pytest.fixture
def client(app_engine: Engine) -> Iterator[TestClient]:
    headers = {"Authorization": f"Bearer {operator_token()}"}
    with TestClient(create_app(), base_url="http://testserver", headers=headers) as test_client:
        yield test_client


@pytest.fixture
def anonymous_client(app_engine: Engine) -> Iterator[TestClient]:
    """No Authorization header."""
    with TestClient(create_app(), base_url="http://testserver") as test_client:
        yield test_client


@pytest.fixture
def server_url(app_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, for FHIR client libraries and concurrency tests.

    It runs with QIAO_AUTH=false (plain HTTP clients); tests/auth covers authentication over a real server too."""
    monkeypatch.setattr(get_settings(), "auth", False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/fhir"
    server.should_exit = True
    thread.join(timeout=10)


# --- personal data never reaches the logs ----------------------------------------------------------------------
# Every test process logs at DEBUG, through Qiao's formatter, into a file; at the end the controller scans them all
# for the test data's personal values and for anything shaped like an ID number or a mobile phone number.


def pytest_configure(config: pytest.Config) -> None:
    log_dir = os.environ.setdefault("QIAO_TEST_LOG_DIR", tempfile.mkdtemp(prefix="qiao-test-logs-"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    qiao_logging.configure("DEBUG")
    handler = logging.FileHandler(Path(log_dir) / f"{worker}.log", encoding="utf-8")
    handler.setFormatter(qiao_logging.JsonFormatter(masking=False))  # check what Qiao logs, not what the mask hides
    logging.getLogger().addHandler(handler)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    leaks = []
    for path in sorted(Path(os.environ["QIAO_TEST_LOG_DIR"]).glob("*.log")):
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            found = [v for v in builders.PERSONAL_VALUES if v in line] + qiao_logging.PERSONAL_PATTERN.findall(line)
            if found:
                leaks.append(f"{path.name}:{number}: {found}")
    if leaks:
        print("\nPERSONAL DATA IN THE LOGS:\n" + "\n".join(leaks[:50]))
        session.exitstatus = 1

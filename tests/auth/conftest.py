"""Clients of two institutions and the CDC, registered as `qiao client add` would, with tokens from the endpoint."""

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app import db
from app.auth import clients
from tests.auth.keys import ClientKey, token_form

Headers = dict[str, str]


@pytest.fixture(scope="session")
def rsa_key() -> ClientKey:
    return ClientKey("RS384")


@pytest.fixture(scope="session")
def ec_key() -> ClientKey:
    return ClientKey("ES384")


@pytest.fixture
def register(app_engine: Engine, rsa_key: ClientKey) -> Callable[..., None]:
    def add(client_id: str, organization: str, scope: str = "system/*.cruds", key: ClientKey | None = None, **options: Any) -> None:
        with db.transaction() as session:
            clients.add(session, client_id, organization=organization, scope=scope, jwks=(key or rsa_key).jwks, **options)

    return add


@pytest.fixture
def login(anonymous_client: TestClient, rsa_key: ClientKey) -> Callable[..., Headers]:
    """Ask the token endpoint for a token, as the client would; the headers that carry it."""

    def token(client_id: str, scope: str = "system/*.cruds", key: ClientKey | None = None, **extra: str) -> Headers:
        response = anonymous_client.post("/fhir/auth/token", data=token_form((key or rsa_key).assertion(client_id), scope, **extra))
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    return token


@pytest.fixture
def institutions(register: Callable[..., None], login: Callable[..., Headers]) -> dict[str, Headers]:
    """A community health centre, a hospital, a hospital emergency department allowed to break the glass, the CDC
    (access to every resident) and an auditor."""
    register("chc", "chc-1")
    register("hospital", "hosp-1")
    register("emergency", "hosp-1", break_glass=True)
    register("cdc", "cdc-1", scope="system/*.rs", access="all")
    register("auditor", "chc-1", scope="system/AuditEvent.rs")
    return {
        "chc": login("chc"),
        "hospital": login("hospital"),
        "emergency": login("emergency", purpose_of_use="BTG"),
        "cdc": login("cdc", scope="system/*.rs"),
        "auditor": login("auditor", scope="system/AuditEvent.rs"),
    }

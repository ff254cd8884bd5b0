"""A response is sent only after its transaction committed, and a failed commit is an error, not a success."""

import time

import httpx
import pytest
from sqlalchemy.orm import Session

from tests.builders import FHIR_JSON, patient


def test_response_waits_for_the_commit(server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    commit = Session.commit

    def slow_commit(self: Session) -> None:
        time.sleep(0.5)
        commit(self)

    monkeypatch.setattr(Session, "commit", slow_commit)
    start = time.monotonic()
    response = httpx.post(f"{server_url}/Patient", json=patient(), headers=FHIR_JSON)
    assert response.status_code == 201
    assert time.monotonic() - start >= 0.5


def test_failed_commit_is_an_error(server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_commit(self: Session) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(Session, "commit", failing_commit)
    response = httpx.post(f"{server_url}/Patient", json=patient(), headers=FHIR_JSON)
    assert response.status_code == 500
    assert response.json()["resourceType"] == "OperationOutcome"
    assert "disk full" not in response.text

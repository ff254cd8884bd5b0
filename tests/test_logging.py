"""Personal data stays out of the logs: masked as a second line of defence, and never logged in the first place
(tests/conftest.py scans the whole run's logs, unmasked)."""

import logging

import pytest
from fastapi.testclient import TestClient

from app import logging as qiao_logging
from app.main import create_app
from app.store import repository
from tests.builders import FHIR_JSON, ID_NUMBERS, PHONES, patient


def test_id_numbers_and_phones_are_masked() -> None:
    record = logging.LogRecord("qiao", logging.INFO, __file__, 1, f"id {ID_NUMBERS[0]} phone {PHONES[0]} pk 12345", None, None)
    line = qiao_logging.JsonFormatter().format(record)
    assert ID_NUMBERS[0] not in line and PHONES[0] not in line and "pk 12345" in line
    assert "1a2b3c4d5e6f7a8b9c0d" in qiao_logging.mask("ref 1a2b3c4d5e6f7a8b9c0d")  # hex ids are not numbers


def test_a_500_logs_a_reference_not_the_data(client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(f"resident {ID_NUMBERS[1]} phone {PHONES[1]}")

    monkeypatch.setattr(repository, "read", broken)
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(), raise_server_exceptions=False, headers=dict(client.headers)) as http:
        response = http.get("/fhir/Patient/x")
    assert response.status_code == 500
    reference = response.json()["issue"][0]["diagnostics"].split()[-1]
    assert ID_NUMBERS[1] not in response.text
    unmasked = qiao_logging.JsonFormatter(masking=False)
    lines = [unmasked.format(r) for r in caplog.records]
    assert any(reference in line for line in lines)
    assert not [line for line in lines if ID_NUMBERS[1] in line or PHONES[1] in line]


def test_rejected_resources_are_not_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bad = patient(id_card=ID_NUMBERS[1], telecom=[{"system": "phone", "value": PHONES[1]}], birthDate="not a date")
    assert client.post("/fhir/Patient", json=bad, headers=FHIR_JSON).status_code == 400
    assert not [r for r in caplog.records if ID_NUMBERS[1] in r.getMessage() or PHONES[1] in str(getattr(r, "fields", ""))]

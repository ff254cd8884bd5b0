"""Export jobs: tokens and the access policy on kick-off, status and files; throttling; a job's point in time; and
a job interrupted by a shutdown or a dead process resuming, or failing with a clear error."""

import threading
import time
from datetime import timedelta
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from app import db
from app.auth.principal import SYSTEM
from app.bulk import export, jobs, params
from app.bulk.tables import bulk_job
from app.config import get_settings
from app.store import dates
from app.store import repository as store
from tests.auth.conftest import Headers, ec_key, institutions, login, register, rsa_key  # noqa: F401 (fixtures)
from tests.builders import FHIR_JSON, patient
from tests.bulk.test_export import ASYNC, kick_off, manifest, post, resources_of, sources


def test_kick_off_status_and_files_need_the_token_of_the_client_that_asked(
        anonymous_client: TestClient, institutions: dict[str, Headers]) -> None:  # noqa: F811
    assert anonymous_client.get("/fhir/$export", headers=ASYNC).status_code == 401
    post(anonymous_client, patient("王", "芳"), institutions["chc"])
    location = kick_off(anonymous_client, headers=institutions["cdc"])
    body = manifest(anonymous_client, location, institutions["cdc"])
    url = body["output"][0]["url"]
    assert anonymous_client.get(url).status_code == 401
    assert anonymous_client.get(location).status_code == 401
    for stranger in ("hospital", "chc"):  # another client's export is unknown to it
        assert anonymous_client.get(location, headers=institutions[stranger]).status_code == 404
        assert anonymous_client.get(url, headers=institutions[stranger]).status_code == 404
        assert anonymous_client.delete(location, headers=institutions[stranger]).status_code == 404
    assert anonymous_client.get(url, headers=institutions["cdc"]).status_code == 200


def test_an_export_holds_only_what_the_client_may_see(anonymous_client: TestClient, institutions: dict[str, Headers]) -> None:  # noqa: F811
    chc_resident = post(anonymous_client, patient("王", "芳"), institutions["chc"])
    hospital_resident = post(anonymous_client, patient("李", "娜", birth_date="1990-02-02"), institutions["hospital"])
    hospital = resources_of(anonymous_client, manifest(anonymous_client, kick_off(anonymous_client, headers=institutions["hospital"], _type="Patient"),
                                                       institutions["hospital"]), institutions["hospital"])
    assert sources(hospital["Patient"]) == {hospital_resident}
    cdc = resources_of(anonymous_client, manifest(anonymous_client, kick_off(anonymous_client, headers=institutions["cdc"], _type="Patient"),
                                                  institutions["cdc"]), institutions["cdc"])
    assert sources(cdc["Patient"]) == {chc_resident, hospital_resident}
    refused = anonymous_client.get("/fhir/$export", params={"_type": "AuditEvent"}, headers={**ASYNC, **institutions["cdc"]})
    assert refused.status_code == 403  # the audit trail only with a scope that names it


def test_polling_too_often_and_too_many_exports_are_throttled(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "bulk_retry_after_seconds", 30)
    monkeypatch.setattr(get_settings(), "bulk_max_jobs_per_client", 1)
    monkeypatch.setattr(get_settings(), "bulk_settle_seconds", 0.0)
    with db.transaction() as session:  # a job no worker takes: its lease is held
        job_id = jobs.kick_off(session, SYSTEM, params.ExportRequest(params.SYSTEM), "http://testserver/fhir/$export", requires_token=True)
        session.execute(update(bulk_job).where(bulk_job.c.id == job_id).values(lease_until=dates.now() + timedelta(hours=1)))
    location = f"http://testserver/fhir/bulk/{job_id}"
    assert client.get(location).status_code == 202
    again = client.get(location)
    assert again.status_code == 429 and again.headers["Retry-After"] == "30"
    with db.transaction() as session:
        with pytest.raises(Exception, match="still running"):
            jobs.kick_off(session, SYSTEM, params.ExportRequest(params.SYSTEM), "x", requires_token=True)


def _job(request: params.ExportRequest) -> str:
    with db.transaction() as session:
        job_id = jobs.kick_off(session, SYSTEM, request, "http://testserver/fhir/$export", requires_token=False)
    with db.transaction() as session:
        assert jobs.claim(session) == job_id
    return job_id


def _lines(job_id: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for path in sorted(jobs.directory(job_id).glob("output-*.ndjson"))
            for line in path.read_bytes().splitlines()]


def _status(job_id: str) -> jobs.Status:
    with db.transaction() as session:
        return jobs.status(session, SYSTEM, job_id, "http://testserver/fhir")


def test_an_export_holds_each_resource_as_it_was_at_its_transaction_time(app_engine: Engine) -> None:
    with db.transaction() as session:
        stored = store.create(session, "Organization", {"resourceType": "Organization", "name": "旧名"})
    job_id = _job(params.ExportRequest(params.SYSTEM, types=["Organization"]))
    with db.transaction() as session:
        session.execute(update(bulk_job).where(bulk_job.c.id == job_id).values(transaction_time=dates.now()))
    time.sleep(0.002)  # lastUpdated is in milliseconds: a change in the same millisecond would be at the transaction time
    with db.transaction() as session:
        store.update(session, "Organization", stored.resource_id, {"resourceType": "Organization", "id": stored.resource_id, "name": "新名"})
        store.create(session, "Organization", {"resourceType": "Organization", "name": "后来的"})
    export.run(job_id)
    assert [o["name"] for o in _lines(job_id)] == ["旧名"]
    assert _status(job_id).manifest is not None


def test_a_job_stopped_by_a_shutdown_resumes_after_its_last_file(app_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "bulk_file_resources", 2)
    monkeypatch.setattr(get_settings(), "bulk_batch_size", 2)
    with db.transaction() as session:
        names = {store.create(session, "Organization", {"resourceType": "Organization", "name": f"中心 {i}"}).resource_id for i in range(7)}
    job_id = _job(params.ExportRequest(params.SYSTEM, types=["Organization"]))
    stopping = threading.Event()
    stopping.set()
    export.run(job_id, stopping)  # stops after its first batch (the first file, left unfinished)
    assert _status(job_id).status_code == 202
    with db.transaction() as session:
        assert jobs.claim(session) == job_id  # released at once, and the stop did not count as an attempt
        assert jobs.load(session, job_id).attempts == 1
    export.run(job_id)
    status = _status(job_id)
    assert status.manifest is not None and [o["count"] for o in status.manifest["output"]] == [2, 2, 2, 1]
    exported = [o["id"] for o in _lines(job_id)]
    assert sorted(exported) == sorted(names)  # each once


def test_a_job_whose_process_keeps_dying_fails_with_a_clear_error(client: TestClient) -> None:
    with db.transaction() as session:
        job_id = jobs.kick_off(session, SYSTEM, params.ExportRequest(params.SYSTEM), "http://testserver/fhir/$export", requires_token=True)
        session.execute(update(bulk_job).where(bulk_job.c.id == job_id).values(
            status="running", attempts=jobs.MAX_ATTEMPTS, lease_until=dates.now() - timedelta(seconds=1)))
    location = f"http://testserver/fhir/bulk/{job_id}"
    for _ in range(100):
        answer = client.get(location)
        if answer.status_code != 202:
            break
        threading.Event().wait(0.05)
    assert answer.status_code == 500
    assert answer.json()["resourceType"] == "OperationOutcome" and "interrupted 3 times" in answer.text


def test_fhir_json_is_what_a_posted_kick_off_takes(client: TestClient) -> None:
    refused = client.post("/fhir/$export", json={"resourceType": "Patient"}, headers={**ASYNC, **FHIR_JSON})
    assert refused.status_code == 400 and "Parameters" in refused.text


def test_a_job_cancelled_while_it_writes_a_file_ends_cancelled_not_failed(app_engine: Engine, monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    with db.transaction() as session:
        store.create(session, "Organization", {"resourceType": "Organization", "name": "中心"})
    job_id = _job(params.ExportRequest(params.SYSTEM, types=["Organization"]))
    write = export.Export._write

    def cancel_then_write(self: export.Export, *args: Any) -> int:
        with db.transaction() as session:
            jobs.cancel(session, SYSTEM, job_id)  # deletes the folder under the file being written
        return write(self, *args)

    monkeypatch.setattr(export.Export, "_write", cancel_then_write)
    export.run(job_id)
    with db.read_session() as session:
        job = jobs.load(session, job_id)
    assert (job.status, job.error) == ("cancelled", None)
    assert not jobs.directory(job_id).exists()
    assert [r.message for r in caplog.records if r.name == "qiao.bulk"] == ["bulk.cancelled"]  # no error logged

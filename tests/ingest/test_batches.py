"""Messages that arrive together are applied together: a file's, and those MLLP connections send while a batch is
being applied. Each message still ends on its own: a copy is a duplicate, a bad one fails alone, a correction of
an earlier message in the same batch is applied after it, and a batch that cannot be applied as a whole is
applied message by message."""

import asyncio
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adapters.hl7v2 import mllp
from app.ingest import pipeline
from app.ingest.gathering import Gathering
from app.store import repository as store
from tests.ingest.messages import adt, gb18030, oru
from tests.ingest.test_hl7v2 import HOSPITAL, fhir, msa
from tests.ingest.test_rows import post_file


def hl7_file(*messages: str) -> bytes:
    return b"".join(gb18030(m) + b"\n" for m in messages)


def states(client: TestClient) -> list[str]:
    return [m["state"] for m in client.get("/ingest/messages").json()["messages"]]


def test_a_file_s_copies_failures_and_corrections_each_end_on_their_own(client: TestClient) -> None:
    corrected = oru(control_id="LAB0002").replace("|150|mmHg", "|148|mmHg")
    body = hl7_file(adt(), oru(), oru(), corrected, adt(control_id="MSG0002", mrn="MZ1002", sex="7"),
                    adt(control_id="MSG0003", mrn="MZ1003", family="王", given="芳", id_card="110105195001010027", visit="V2003"))
    response = post_file(client, body, "his-20261120.hl7", source=HOSPITAL)
    assert response.status_code == 422
    assert response.json()["counts"] == {"processed": 4, "duplicate": 1, "failed": 1}
    assert states(client) == ["processed", "processed", "duplicate", "processed", "failed", "processed"]
    systolic = fhir(client, "Observation", code="http://loinc.org|8480-6")["entry"]
    assert [e["resource"]["valueQuantity"]["value"] for e in systolic] == [148]  # the correction, applied after
    assert systolic[0]["resource"]["meta"]["versionId"] == "2"
    assert len(fhir(client, "Patient", identifier="urn:oid:2.16.156.10011.1.3|110105195001010027")["entry"]) == 1


def test_a_batch_that_cannot_be_applied_whole_is_applied_message_by_message(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    apply = store.apply

    def refusing(session: Any, writes: list[store.Write], **options: Any) -> list[store.Stored]:
        if any(w.resource_type == "Patient" and "李" in str(w.content) for w in writes):
            raise RuntimeError("refused")  # e.g. a deadlock: the whole transaction is lost
        return apply(session, writes, **options)

    monkeypatch.setattr(pipeline.store, "apply", refusing)
    body = hl7_file(adt(), adt(control_id="MSG0002", mrn="MZ1002", family="李", given="四", id_card="110105195001010027", visit="V2002"),
                    adt(control_id="MSG0003", mrn="MZ1003", family="王", given="芳", id_card="110105196001010024", visit="V2003"))
    counts = post_file(client, body, "his-20261120.hl7", source=HOSPITAL).json()
    assert counts["counts"] == {"processed": 2, "failed": 1}
    assert "internal error (RuntimeError)" in counts["failed"][0]["diagnostics"]
    assert states(client) == ["processed", "failed", "processed"]


def test_mllp_senders_on_several_connections_each_hear_their_own_acknowledgements(mllp_server: int) -> None:
    def admissions(connection: int) -> list[bytes]:
        return [gb18030(adt(control_id=f"C{connection}M{n}", mrn=f"MZ{connection}{n:03d}", visit=f"V{connection}{n:03d}"))
                for n in range(5)]

    async def all_connections() -> list[list[bytes]]:
        return await asyncio.gather(*(mllp.send("127.0.0.1", mllp_server, admissions(c)) for c in range(4)))

    for connection, replies in enumerate(asyncio.run(all_connections())):
        assert [msa(r, "gb18030")[1:3] for r in replies] == [["AA", f"C{connection}M{n}"] for n in range(5)]


def test_what_arrives_during_a_batch_waits_for_the_next_and_a_failed_batch_fails_its_senders() -> None:
    sizes: list[int] = []
    busy = threading.Event()

    def double(items: list[int]) -> list[int]:
        sizes.append(len(items))
        busy.set()
        time.sleep(0.05)
        if -1 in items:
            raise ValueError("bad batch")
        return [2 * i for i in items]

    async def scenario() -> tuple[list[int], list[Any], int]:
        gathering = Gathering(double, limit=4)
        first = asyncio.create_task(gathering.submit(0))
        await asyncio.to_thread(busy.wait)
        results = await asyncio.gather(first, *(gathering.submit(i) for i in range(1, 7)))
        failed = await asyncio.gather(gathering.submit(-1), gathering.submit(5), return_exceptions=True)
        return list(results), failed, await gathering.submit(21)

    results, failed, after = asyncio.run(scenario())
    assert results == [0, 2, 4, 6, 8, 10, 12] and after == 42
    assert sizes[:3] == [1, 4, 2]  # the first alone; the six that came meanwhile, at most four at a time
    assert [type(f) for f in failed] == [ValueError, ValueError]

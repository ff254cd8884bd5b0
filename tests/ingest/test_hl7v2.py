"""HL7 v2 into FHIR end to end: over HTTP and MLLP, into the store, with the message kept whatever happens."""

import asyncio
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.hl7v2 import mllp
from app.mapping import codes
from tests.ingest.messages import ID_CARD, LEGACY_ID_CARD, adt, gb18030, oru

HOSPITAL = "dongcheng-hospital"


def post(client: TestClient, body: bytes, source: str = HOSPITAL) -> Any:
    return client.post("/ingest/hl7v2", params={"source": source}, content=body,
                       headers={"Content-Type": "x-application/hl7-v2+er7"})


def msa(ack: bytes, charset: str = "utf-8") -> list[str]:
    segments = ack.decode(charset).split("\r")
    return next(s for s in segments if s.startswith("MSA")).split("|")


def fhir(client: TestClient, path: str, **params: str) -> dict[str, Any]:
    response = client.get(f"/fhir/{path}", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_an_admission_in_gb18030_becomes_a_patient_and_an_encounter(client: TestClient) -> None:
    response = post(client, gb18030(adt()))
    assert response.status_code == 200, response.content
    assert msa(response.content, "gb18030")[1:3] == ["AA", "MSG0001"]
    patients = fhir(client, "Patient", identifier=f"urn:oid:2.16.156.10011.1.3|{ID_CARD}")["entry"]
    assert len(patients) == 1
    patient = patients[0]["resource"]
    assert patient["name"][0] == {"text": "张三", "family": "张", "given": ["三"]}
    assert patient["gender"] == "male" and patient["birthDate"] == "1949-12-31"
    assert patient["address"][0]["district"] == "东城区" and patient["managingOrganization"]["reference"] == "Organization/hosp-1"
    assert {"system": "urn:oid:2.16.156.10011.1.11.1001", "value": "MZ1001"}.items() <= patient["identifier"][1].items()
    assert patient["identifier"][1]["type"]["coding"][0]["code"] == "MR"  # a constant element goes with its identifier
    encounter = fhir(client, "Encounter", subject=f"Patient/{patient['id']}")["entry"][0]["resource"]
    assert encounter["class"]["code"] == "AMB" and encounter["status"] == "in-progress"
    assert encounter["period"]["start"] == "2026-11-20T09:00:00+08:00"  # no offset sent: Asia/Shanghai
    provenance = fhir(client, "Provenance", target=f"Patient/{patient['id']}")["entry"][0]["resource"]
    assert provenance["policy"] == ["urn:qiao:mapping:hl7v2/ADT_A01|3"]
    message_id = provenance["entity"][0]["what"]["identifier"]["value"]
    message = client.get(f"/ingest/messages/{message_id}").json()
    assert message["state"] == "processed" and message["charset"] == "gb18030" and message["kind"] == "ADT^A04"


def test_a_resent_message_is_recognised_and_not_applied_twice(client: TestClient) -> None:
    first = post(client, gb18030(adt()))
    again = post(client, gb18030(adt()))  # same MSH-10
    same_bytes_new_id = post(client, gb18030(adt(control_id="MSG0001")))
    assert first.status_code == again.status_code == same_bytes_new_id.status_code == 200
    assert "duplicate" in msa(again.content, "gb18030")[3]
    patient = fhir(client, "Patient", identifier=f"urn:oid:2.16.156.10011.1.3|{ID_CARD}")["entry"][0]["resource"]
    assert patient["meta"]["versionId"] == "1"
    states = [m["state"] for m in client.get("/ingest/messages", params={"source": HOSPITAL}).json()["messages"]]
    assert states == ["processed", "duplicate", "duplicate"]


def test_an_update_changes_the_same_patient_and_a_legacy_id_is_upgraded(client: TestClient) -> None:
    post(client, gb18030(adt()))
    response = post(client, gb18030(adt("A08", control_id="MSG0002", given="叁", id_card=LEGACY_ID_CARD)))
    assert response.status_code == 200
    patients = fhir(client, "Patient", identifier="urn:oid:2.16.156.10011.1.11.1001|MZ1001")["entry"]
    assert len(patients) == 1 and patients[0]["resource"]["meta"]["versionId"] == "2"
    assert patients[0]["resource"]["identifier"][0]["value"] == "11010519491231002X"


def test_results_become_observations_with_loinc_and_ucum_and_a_report(client: TestClient) -> None:
    post(client, gb18030(adt()))
    raw = b"\xef\xbb\xbf" + oru().replace("\r", "\n").encode()  # UTF-8 with a BOM and LF segment ends
    response = post(client, raw)
    assert response.status_code == 200, response.content
    report = fhir(client, "DiagnosticReport")["entry"][0]["resource"]
    assert len(report["result"]) == 10
    observations = {o["resource"]["code"]["text"]: o["resource"] for o in fhir(client, "Observation", _count="50")["entry"]}
    systolic = observations["收缩压"]
    assert systolic["code"]["coding"][0] == {"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"}
    assert systolic["valueQuantity"] == {"value": 150, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
    assert systolic["category"][0]["coding"][0]["code"] == "vital-signs"
    assert observations["空腹血糖"]["category"][0]["coding"][0]["code"] == "laboratory"
    assert observations["医生意见"]["valueString"] == "建议复查|随访"  # \F\ unescaped
    assert "category" not in observations["医生意见"]  # a local code with no LOINC keeps only its own coding
    patient = fhir(client, "Patient", identifier=f"urn:oid:2.16.156.10011.1.3|{ID_CARD}")["entry"][0]["resource"]
    assert patient["meta"]["versionId"] == "1"  # a result message does not overwrite demographics
    assert systolic["subject"]["reference"] == f"Patient/{patient['id']}"
    # the pair is also the panel a public-health follow-up records, found by the code the follow-up searches
    panel = fhir(client, "Observation", code="http://loinc.org|85354-9")["entry"][0]["resource"]
    assert [(c["code"]["coding"][0]["code"], c["valueQuantity"]["value"]) for c in panel["component"]] == [("8480-6", 150), ("8462-4", 95)]
    assert panel["subject"] == systolic["subject"] and panel["effectiveDateTime"] == systolic["effectiveDateTime"]


def test_a_message_that_fails_to_map_is_kept_named_and_replayable(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    response = post(client, gb18030(adt(sex="7")))
    assert response.status_code == 422
    ack = response.content.decode("gb18030")
    assert msa(response.content, "gb18030")[1] == "AE"
    err = next(s for s in ack.split("\r") if s.startswith("ERR")).split("|")
    assert err[2] == "PID^1^8" and err[3].startswith("103^")
    failed = client.get("/ingest/messages", params={"state": "failed", "source": HOSPITAL}).json()["messages"]
    assert len(failed) == 1 and failed[0]["error"]["issue"][0]["expression"] == ["PID-8"]
    assert fhir(client, "Patient")["total"] == 0  # atomic: nothing of it was applied

    monkeypatch.setitem(codes.tables()["sex"].entries, "7", "unknown")  # the steward fixes the code table
    replayed = client.post(f"/ingest/messages/{failed[0]['id']}/$replay").json()
    assert replayed["state"] == "processed" and replayed["attempts"] == 2
    assert fhir(client, "Patient")["entry"][0]["resource"]["gender"] == "unknown"


def test_what_is_not_hl7_is_rejected_and_still_kept(client: TestClient) -> None:
    response = post(client, b"hello, this is not HL7")
    assert response.status_code == 400 and msa(response.content)[1] == "AR"
    kept = client.get("/ingest/messages", params={"state": "failed", "source": HOSPITAL}).json()["messages"]
    assert kept[0]["error"]["issue"][0]["expression"] == ["MSH"]


def test_a_nul_byte_is_refused_with_its_position_and_the_message_kept(client: TestClient) -> None:
    message = adt(control_id="MSG0042").encode("gb18030").replace(b"MSG0042", b"\x00SG0042")
    response = post(client, message)
    assert response.status_code == 400 and msa(response.content, "gb18030")[1] == "AR"
    kept = client.get("/ingest/messages", params={"state": "failed", "source": HOSPITAL}).json()["messages"]
    assert "NUL" in kept[0]["error"]["issue"][0]["diagnostics"]


def test_an_unknown_message_type_is_rejected_with_its_reason(client: TestClient) -> None:
    message = adt().replace("ADT^A04^ADT_A01", "ADT^A99^ADT_A01")
    response = post(client, message.encode("gb18030"))
    assert response.status_code == 400
    err = next(s for s in response.content.decode("gb18030").split("\r") if s.startswith("ERR")).split("|")
    assert err[3].startswith("200^") and "no mapping for ADT\\S\\A99" in err[8]  # ^ escaped as \S\


def test_sending_needs_a_token_and_a_known_source(client: TestClient, anonymous_client: TestClient) -> None:
    assert post(anonymous_client, gb18030(adt())).status_code == 401
    assert post(client, gb18030(adt()), source="nowhere").status_code == 400


def test_mllp_acknowledges_each_message_in_order_over_a_real_socket(mllp_server: int, client: TestClient) -> None:
    messages = [gb18030(adt()), oru().encode(), b"MSH|garbage", gb18030(adt(control_id="MSG0009", sex="7"))]
    replies = asyncio.run(mllp.send("127.0.0.1", mllp_server, messages))
    assert [msa(r, "gb18030")[1] for r in replies] == ["AA", "AA", "AR", "AE"]
    states = [m["state"] for m in client.get("/ingest/messages").json()["messages"]]
    assert states == ["processed", "processed", "failed", "failed"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_garbled_truncated_or_misencoded_messages_never_crash_and_are_kept(client: TestClient, data: st.DataObject) -> None:
    message = adt().encode("gb18030")
    damage = data.draw(st.sampled_from(["truncate", "flip", "random", "latin1"]))
    if damage == "truncate":
        body = message[: data.draw(st.integers(1, len(message) - 1))]
    elif damage == "flip":
        position = data.draw(st.integers(0, len(message) - 1))
        body = message[:position] + bytes([data.draw(st.integers(0, 255))]) + message[position + 1:]
    elif damage == "random":
        body = data.draw(st.binary(min_size=1, max_size=300))
    else:
        body = adt().encode("gb18030").replace(b"2.4|||||||", b"2.4|||||||8859/1")
    response = post(client, body)
    assert response.status_code in (200, 400, 422), response.content
    message_id = int(response.headers["Location"].rsplit("/", 1)[1])
    assert client.get(f"/ingest/messages/{message_id}").json()["state"] in ("processed", "failed", "duplicate")

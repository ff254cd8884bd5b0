"""HIS orders (ORM^O01, OML^O21) into ServiceRequests: one per order group, updated by later messages about it."""

from typing import Any

from fastapi.testclient import TestClient

from tests.ingest.messages import adt, gb18030, orm
from tests.ingest.test_hl7v2 import fhir, msa, post

LAB_CODES = "urn:oid:2.16.156.10011.1.11.1001.9"


def orders(client: TestClient) -> dict[str, dict[str, Any]]:
    """The ServiceRequests by the placer's order number."""
    found = fhir(client, "ServiceRequest")["entry"]
    return {next(i["value"] for i in e["resource"]["identifier"] if i["type"]["coding"][0]["code"] == "PLAC"): e["resource"]
            for e in found}


def test_each_order_group_becomes_a_service_request_with_its_own_note(client: TestClient) -> None:
    post(client, gb18030(adt()))
    message = orm([("NW", "P100", "LAB01", "血常规", "空腹采血", "", "S"), ("NW", "P101", "LAB02", "糖化血红蛋白", "", "", "R")])
    response = post(client, gb18030(message))
    assert response.status_code == 200, response.content
    assert msa(response.content, "gb18030")[1:3] == ["AA", "ORD0001"]
    by_number = orders(client)
    first, second = by_number["P100"], by_number["P101"]
    assert first["status"] == "active" and first["intent"] == "order" and first["priority"] == "stat"
    assert first["code"] == {"coding": [{"system": LAB_CODES, "code": "LAB01", "display": "血常规"}], "text": "血常规"}
    assert first["note"] == [{"text": "空腹采血"}]
    assert "note" not in second  # the second order has no NTE: it does not take the first one's
    assert second["code"]["coding"][0]["code"] == "LAB02" and second["priority"] == "routine"
    assert {"value": "FP101"}.items() <= next(i for i in second["identifier"] if i["type"]["coding"][0]["code"] == "FILL").items()
    assert first["authoredOn"] == "2026-11-20T09:40:00+08:00" and first["requester"]["display"] == "李医生"
    assert first["reasonCode"][0]["coding"][0] == {"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10", "display": "高血压"}
    patient = fhir(client, "Patient", identifier="urn:oid:2.16.156.10011.1.11.1001|MZ1001")["entry"][0]["resource"]
    encounter = fhir(client, "Encounter", subject=f"Patient/{patient['id']}")["entry"]
    assert len(encounter) == 1  # the ADT's visit, not a second one
    assert first["subject"]["reference"] == f"Patient/{patient['id']}"
    assert first["encounter"]["reference"] == f"Encounter/{encounter[0]['resource']['id']}"
    assert patient["meta"]["versionId"] == "1"  # an order does not overwrite demographics


def test_a_later_message_about_an_order_changes_its_status(client: TestClient) -> None:
    post(client, gb18030(orm([("NW", "P100", "LAB01", "血常规", "", "", "R")])))
    post(client, gb18030(orm([("OC", "P100", "LAB01", "血常规", "", "", "R")], control_id="ORD0002")))
    cancelled = orders(client)["P100"]
    assert cancelled["status"] == "revoked" and cancelled["meta"]["versionId"] == "2"
    post(client, gb18030(orm([("SC", "P100", "LAB01", "血常规", "", "CM", "R")], control_id="ORD0003")))
    assert orders(client)["P100"]["status"] == "completed"  # ORC-5 says what became of it


def test_a_v2_5_lab_order_and_an_unknown_order_control_code(client: TestClient) -> None:
    message = orm([("NW", "P200", "LAB03", "肝功能", "", "", "A")], kind="OML^O21^OML_O21", version="2.5.1", control_id="ORD0010",
                  charset_field="UNICODE UTF-8")
    assert post(client, message.encode()).status_code == 200
    assert orders(client)["P200"]["priority"] == "asap"
    assert fhir(client, "Patient")["total"] == 1  # created from PID: the HIS never sent an ADT for this resident

    response = post(client, gb18030(orm([("ZZ", "P201", "LAB03", "肝功能", "", "", "R")], control_id="ORD0011")))
    assert response.status_code == 422 and msa(response.content, "gb18030")[1] == "AE"
    failed = client.get("/ingest/messages", params={"state": "failed"}).json()["messages"]
    assert failed[0]["error"]["issue"][0]["expression"] == ["ORC-1"]

"""The follow-up forms as Questionnaires: derived from the mappings that fill them, so every item a
QuestionnaireResponse of that form holds is an item of its Questionnaire, of the type its answer is."""

from typing import Any

import orjson
from fastapi.testclient import TestClient

from tests.ingest.test_hl7v2 import fhir
from tests.ingest.test_rows import followup, jsonl, post_file

ANSWER_TYPES = {"valueString": "string", "valueDecimal": "decimal", "valueDate": "date", "valueDateTime": "dateTime",
                "valueCoding": "choice", "valueInteger": "integer", "valueBoolean": "boolean"}


def items_by_link(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {}
    for item in items:
        found[item["linkId"]] = item
        found.update(items_by_link(item.get("item") or []))
    return found


def test_each_form_is_published_and_answers_its_responses(client: TestClient) -> None:
    listed = fhir(client, "Questionnaire")
    assert {e["resource"]["url"] for e in listed["entry"]} == {"urn:qiao:questionnaire:hypertension-followup",
                                                                "urn:qiao:questionnaire:t2dm-followup"}
    form = followup(symptoms_other="乏力", referral_reason="血压控制不满意", drinking=2)
    assert post_file(client, jsonl(form), "hypertension-03.jsonl").status_code == 200
    response = fhir(client, "QuestionnaireResponse")["entry"][0]["resource"]
    questionnaire = fhir(client, "Questionnaire", url=response["questionnaire"])["entry"][0]["resource"]
    assert questionnaire["title"] == "高血压患者随访服务记录表" and questionnaire["status"] == "active"
    assert fhir(client, f"Questionnaire/{questionnaire['id']}") == questionnaire
    published = items_by_link(questionnaire["item"])
    for link, item in items_by_link(response["item"]).items():
        assert link in published, f"{link} is not in the Questionnaire"
        for answer in item.get("answer") or []:
            [kind] = [k for k in answer if k.startswith("value")]
            assert published[link]["type"] == ANSWER_TYPES[kind], link
            if kind == "valueCoding":
                assert answer[kind] in [o["valueCoding"] for o in published[link]["answerOption"]], link
    assert published["symptoms"]["repeats"] is True and published["medications"]["type"] == "group"


def test_questionnaires_are_read_not_written(client: TestClient) -> None:
    body = orjson.dumps({"resourceType": "Questionnaire", "status": "draft"})
    assert client.post("/fhir/Questionnaire", content=body, headers={"Content-Type": "application/fhir+json"}).status_code == 403
    assert client.get("/fhir/Questionnaire/nothing").status_code == 404
    assert client.get("/fhir/Questionnaire", params={"publisher": "x"}).status_code == 400

"""CSV and JSON exports end to end over HTTP: public-health follow-up forms and HIS database dumps, one message per
row, each row kept, duplicates of a daily dump recognised, a bad row failed alone and replayable."""

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.mapping import codes
from tests.ingest.test_hl7v2 import fhir
from tests.mpi.test_matching import master_of

PUBLIC_HEALTH = "hepingli-public-health"
HIS = "hepingli-chc"
ID_CARD = "11010519491231002X"


def followup(**changes: Any) -> dict[str, Any]:
    """A hypertension follow-up form as the public-health system exports it."""
    form = {
        "form_id": "HTN-2026-0001", "record_no": "110101001-00012", "id_number": ID_CARD, "name": "张三", "sex": "1",
        "birth_date": "1949-12-31", "phone": "13800138000", "visit_date": "2026/3/5", "visit_way": "1",
        "symptoms": "2,4", "sbp": 152, "dbp": 96, "weight": 70.5, "weight_target": 68, "bmi": 25.9, "heart_rate": 78,
        "smoking": 5, "smoking_target": 0, "salt_intake": "中", "salt_intake_target": "轻", "psychology": "1",
        "compliance": "1", "adherence": "2", "adverse_reaction": "1", "classification": "2",
        "medications": [{"name": "苯磺酸氨氯地平片", "times_per_day": 1, "dose": 5, "unit": "mg"},
                        {"name": "厄贝沙坦片", "times_per_day": 1, "dose": 150, "unit": "mg"}],
        "next_visit_date": "2026-03-19", "doctor": "李医生", "enrolled_on": "2024-01-10",
    }
    return {**form, **changes}


def post_file(client: TestClient, body: bytes, name: str, source: str = PUBLIC_HEALTH, **params: str) -> Any:
    return client.post("/ingest/files", params={"source": source, "name": name, **params}, content=body)


def jsonl(*forms: dict[str, Any]) -> bytes:
    return b"\n".join(orjson.dumps(f) for f in forms) + b"\n"


def test_a_hypertension_followup_form_becomes_the_followup_its_readings_drugs_diagnosis_and_enrolment(client: TestClient) -> None:
    response = post_file(client, jsonl(followup()), "hypertension-2026-03.jsonl")
    assert response.status_code == 200, response.text
    assert response.json()["counts"] == {"processed": 1}

    patient = fhir(client, "Patient", identifier="urn:oid:2.16.156.10011.1.2|110101001-00012")["entry"][0]["resource"]
    assert patient["name"] == [{"text": "张三"}] and patient["gender"] == "male" and patient["birthDate"] == "1949-12-31"
    reference = f"Patient/{patient['id']}"
    encounter = fhir(client, "Encounter", subject=reference)["entry"][0]["resource"]
    assert encounter["type"][0]["coding"][0]["code"] == "hypertension-followup" and encounter["class"]["code"] == "AMB"
    assert encounter["period"]["start"] == "2026-03-05" and encounter["status"] == "finished"

    observations = {o["resource"]["code"]["coding"][0]["code"]: o["resource"]
                    for o in fhir(client, "Observation", subject=reference)["entry"]}
    assert set(observations) == {"85354-9", "29463-7", "39156-5", "8867-4", "followup-classification"}
    panel = observations["85354-9"]
    assert [c["valueQuantity"]["value"] for c in panel["component"]] == [152, 96]
    assert panel["component"][0]["valueQuantity"]["code"] == "mm[Hg]" and panel["encounter"]["reference"] == f"Encounter/{encounter['id']}"
    assert observations["followup-classification"]["valueCodeableConcept"]["coding"][0]["display"] == "控制不满意"

    drugs = sorted(m["resource"]["medicationCodeableConcept"]["text"] for m in fhir(client, "MedicationStatement", subject=reference)["entry"])
    assert drugs == ["厄贝沙坦片", "苯磺酸氨氯地平片"]
    condition = fhir(client, "Condition", subject=reference)["entry"][0]["resource"]
    assert condition["code"]["coding"][0]["code"] == "I10"
    enrolment = fhir(client, "EpisodeOfCare", patient=reference)["entry"]
    programme = next(e["resource"] for e in enrolment if e["resource"]["type"][0]["coding"][0]["system"] == "urn:qiao:care-programme")
    assert programme["status"] == "active" and programme["period"]["start"] == "2024-01-10"

    form = fhir(client, "QuestionnaireResponse", subject=reference)["entry"][0]["resource"]
    answers = {item["linkId"]: item for item in form["item"]}
    assert [a["valueCoding"]["display"] for a in answers["symptoms"]["answer"]] == ["头痛头晕", "眼花耳鸣"]
    assert answers["salt_intake"]["answer"][0]["valueCoding"]["code"] == "2"  # exported as words, kept as the form's code
    assert answers["medications"]["item"][1]["answer"][0]["valueString"] == "厄贝沙坦片 每日1次，每次150mg"
    assert "weight_target" in answers and "referral_reason" not in answers  # what the form left empty is not there


def test_a_diabetes_form_puts_the_resident_in_the_registry_with_glucose_and_insulin(client: TestClient) -> None:
    form = followup(form_id="T2DM-2026-0001", visit_way="电话", symptoms=["2", "4"], fasting_glucose=8.2, hba1c=7.4,
                    hba1c_date="2026-02-20", hypoglycemia="2", dorsal_pedal_pulse="1", insulin_type="门冬胰岛素",
                    insulin_usage="每日3次，每次6单位", staple_food=300)
    assert post_file(client, orjson.dumps([form]), "diabetes.json").status_code == 200
    reference = f"Patient/{fhir(client, 'Patient')['entry'][0]['resource']['id']}"
    encounter = fhir(client, "Encounter", subject=reference)["entry"][0]["resource"]
    assert encounter["type"][0]["coding"][0]["code"] == "t2dm-followup" and encounter["class"]["code"] == "VR"
    readings = {o["resource"]["code"]["coding"][0]["code"]: o["resource"] for o in fhir(client, "Observation", subject=reference)["entry"]}
    assert readings["14771-0"]["valueQuantity"] == {"value": 8.2, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}
    assert readings["4548-4"]["effectiveDateTime"] == "2026-02-20"
    drugs = {m["resource"]["medicationCodeableConcept"]["text"] for m in fhir(client, "MedicationStatement", subject=reference)["entry"]}
    assert "门冬胰岛素" in drugs
    assert fhir(client, "Condition", subject=reference)["entry"][0]["resource"]["code"]["coding"][0]["code"] == "E11"
    registry = fhir(client, "EpisodeOfCare", type="urn:qiao:registry|t2dm-registry")["entry"]
    assert len(registry) == 1 and registry[0]["resource"]["status"] == "active"


def test_an_unchanged_row_of_a_daily_dump_is_a_duplicate_and_a_changed_one_is_applied_even_when_changed_back(client: TestClient) -> None:
    first, second = followup(), followup(form_id="HTN-2026-0002", visit_date="2026-03-19", sbp=138, dbp=86, classification="1")
    assert post_file(client, jsonl(first, second), "hypertension-day1.jsonl").json()["counts"] == {"processed": 2}
    assert post_file(client, jsonl(first, second), "hypertension-day2.jsonl").json()["counts"] == {"duplicate": 2}
    corrected = {**second, "sbp": 136}
    assert post_file(client, jsonl(first, corrected), "hypertension-day3.jsonl").json()["counts"] == {"duplicate": 1, "processed": 1}
    assert post_file(client, jsonl(first, second), "hypertension-day4.jsonl").json()["counts"] == {"duplicate": 1, "processed": 1}
    encounter = fhir(client, "Encounter", identifier="urn:qiao:form:hepingli-public-health|HTN-2026-0002")["entry"][0]["resource"]
    panel = fhir(client, "Observation", encounter=f"Encounter/{encounter['id']}", code="http://loinc.org|85354-9")["entry"][0]["resource"]
    assert panel["component"][0]["valueQuantity"]["value"] == 138 and panel["meta"]["versionId"] == "3"


def test_a_his_csv_dump_in_gb18030_is_read_row_by_row_and_a_bad_row_fails_alone(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    dump = ("患者编号,姓名,性别,出生日期,身份证号,联系电话,医保卡号,行政区划,现住址\r\n"
            f"P0001,张三,1,1949-12-31,{ID_CARD},13800138000,YB001,110101,\"和平里街道\r\n3号楼2单元301\"\r\n"
            "P0002,李四,7,1960/5/1,,13900139000,,110101,和平里街道5号楼\r\n"
            "P0003,王芳,女,19700101,,,,,\r\n").encode("gb18030")
    response = post_file(client, dump, "patients-20260305.csv", source=HIS)
    assert response.status_code == 422
    assert response.json()["counts"] == {"processed": 2, "failed": 1}
    failure = response.json()["failed"][0]
    assert failure["location"] == "性别" and "'7' is not in code table sex" in failure["diagnostics"]
    zhang = fhir(client, "Patient", identifier=f"urn:oid:2.16.156.10011.1.3|{ID_CARD}")["entry"][0]["resource"]
    assert zhang["name"] == [{"text": "张三"}] and zhang["address"][0]["line"] == ["和平里街道\r\n3号楼2单元301"]
    message = client.get(f"/ingest/messages/{failure['id']}").json()
    assert message["charset"] == "gb18030" and message["kind"] == "his-patients" and message["controlId"] == "P0002"  # its record

    monkeypatch.setitem(codes.tables()["sex"].entries, "7", "unknown")  # the steward fixes the code table
    replayed = client.post(f"/ingest/messages/{failure['id']}/$replay").json()
    assert replayed["state"] == "processed" and replayed["controlId"] == "P0002"
    assert fhir(client, "Patient", name="李四")["entry"][0]["resource"]["birthDate"] == "1960-05-01"


def test_a_visit_s_blood_pressure_reaches_the_same_resident_the_public_health_record_names(client: TestClient) -> None:
    patients = f"患者编号,姓名,性别,出生日期,身份证号,联系电话\nP0001,张三,1,1949-12-31,{ID_CARD},13800138000\n".encode()
    visits = "就诊号,患者编号,姓名,就诊时间,就诊类型,科室,诊断编码,诊断名称,收缩压,舒张压\nV01,P0001,张三,2026-03-01 09:30,门诊,全科,I10,高血压,148,92\n".encode()
    record = {"record_no": "110101001-00012", "name": "张三", "sex": "男", "birth_date": "1949-12-31", "id_number": ID_CARD,
              "phone": "13800138000", "region_code": "110101", "address": "和平里街道3号楼2单元301", "status": "正常"}
    assert post_file(client, patients, "patients.csv", source=HIS).status_code == 200
    assert post_file(client, visits, "visits.csv", source=HIS).status_code == 200
    assert post_file(client, orjson.dumps(record), "health-record.json").status_code == 200
    his_patient = master_of(client, "urn:oid:2.16.156.10011.1.11.2001|P0001")
    assert his_patient == master_of(client, "urn:oid:2.16.156.10011.1.2|110101001-00012")
    panel = fhir(client, "Observation", code="http://loinc.org|85354-9")["entry"][0]["resource"]
    encounter = fhir(client, "Encounter", identifier="urn:oid:2.16.156.10011.1.11.2001.2|V01")["entry"][0]["resource"]
    assert panel["encounter"]["reference"] == f"Encounter/{encounter['id']}" and encounter["class"]["code"] == "AMB"
    assert fhir(client, "Condition", code="http://hl7.org/fhir/sid/icd-10|I10")["total"] == 1


def test_a_file_that_cannot_be_split_is_kept_whole_as_failed(client: TestClient) -> None:
    response = post_file(client, b"[{\"form_id\": 1,", "hypertension.json")
    assert response.status_code == 422 and response.json()["counts"] == {"failed": 1}
    kept = client.get(f"/ingest/messages/{response.json()['failed'][0]['id']}").json()
    assert kept["kind"] == "hypertension-followup" and kept["error"]["issue"][0]["expression"] == ["file"]


def test_an_export_of_no_known_kind_is_refused_before_anything_is_stored(client: TestClient) -> None:
    response = post_file(client, b"a,b\n1,2\n", "unknown.csv")
    assert response.status_code == 400 and "which kind of export" in response.json()["issue"][0]["diagnostics"]
    assert post_file(client, b"a,b\n1,2\n", "x.csv", kind="nonsense").status_code == 400
    assert client.get("/ingest/messages", params={"source": PUBLIC_HEALTH}).json()["messages"] == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_garbled_or_truncated_exports_never_crash_and_every_row_is_kept(client: TestClient, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["hypertension.csv", "hypertension.jsonl", "hypertension.json"]))
    good = {"hypertension.csv": "form_id,record_no,visit_date,sbp,dbp,sex\nF1,R1,2026-03-05,150,95,1\nF2,R2,2026-03-06,130,80,2\n".encode("gb18030"),
            "hypertension.jsonl": jsonl(followup(), followup(form_id="F2")), "hypertension.json": orjson.dumps([followup()])}[name]
    damage = data.draw(st.sampled_from(["truncate", "flip", "random"]))
    if damage == "truncate":
        body = good[: data.draw(st.integers(1, len(good) - 1))]
    elif damage == "flip":
        position = data.draw(st.integers(0, len(good) - 1))
        body = good[:position] + bytes([data.draw(st.integers(0, 255))]) + good[position + 1:]
    else:
        body = data.draw(st.binary(min_size=1, max_size=300))
    response = post_file(client, body, name)
    assert response.status_code in (200, 422), response.content
    for failure in response.json()["failed"]:
        assert client.get(f"/ingest/messages/{failure['id']}").json()["state"] == "failed"


def test_a_referral_written_on_a_form_becomes_a_draft_the_family_doctor_sends(client: TestClient) -> None:
    form = followup(form_id="HTN-2026-0002", sbp=186, dbp=112, referral_reason="连续两次控制不满意", referral_to="东城区医院 心内科")
    assert post_file(client, jsonl(form), "hypertension-03.jsonl").status_code == 200
    tasks = fhir(client, "Task", code="http://hl7.org/fhir/CodeSystem/task-code|fulfill")["entry"]
    assert len(tasks) == 1  # the form's own; its danger sign (186/112) drafts no second one
    task = tasks[0]["resource"]
    assert task["status"] == "draft" and "东城区医院 心内科" in task["description"]
    request = fhir(client, task["focus"]["reference"])
    assert request["reasonCode"][0]["text"] == "连续两次控制不满意" and request["category"][0]["coding"][1]["code"] == "upward"

    sent = {**{k: v for k, v in task.items() if k != "businessStatus"}, "status": "requested", "owner": {"reference": "Organization/hosp-1"}}
    assert client.put(f"/fhir/Task/{task['id']}", json=sent, headers={"Content-Type": "application/fhir+json"}).status_code == 200
    corrected = {**form, "referral_reason": "血压 186/112 mmHg"}
    assert post_file(client, jsonl(corrected), "hypertension-04.jsonl").json()["counts"] == {"processed": 1}
    assert fhir(client, f"Task/{task['id']}")["businessStatus"]["coding"][0]["code"] == "requested"  # the form does not undo it


def test_a_death_on_a_form_ends_the_registry_entry_and_the_lost_visit_is_no_follow_up(client: TestClient) -> None:
    assert post_file(client, jsonl(followup()), "hypertension-03.jsonl").status_code == 200
    registry = fhir(client, "EpisodeOfCare", type="urn:qiao:registry|hypertension-registry")["entry"]
    assert [e["resource"]["status"] for e in registry] == ["active"]
    resident = {k: followup()[k] for k in ("record_no", "id_number", "name", "sex", "birth_date", "phone", "doctor")}
    died = {**resident, "form_id": "HTN-2026-0009", "visit_date": "2026/9/10", "visit_way": "3", "lost_reason": "死亡",
            "death_date": "2026-08-28", "death_cause": "急性心肌梗死"}
    assert post_file(client, jsonl(died), "hypertension-09.jsonl").json()["counts"] == {"processed": 1}

    patient = fhir(client, "Patient", identifier="urn:oid:2.16.156.10011.1.2|110101001-00012")["entry"][0]["resource"]
    assert patient["deceasedDateTime"] == "2026-08-28" and patient["name"] == [{"text": "张三"}]
    visit = fhir(client, "Encounter", identifier="urn:qiao:form:hepingli-public-health|HTN-2026-0009")["entry"][0]["resource"]
    assert visit["status"] == "cancelled"
    cause = fhir(client, "Observation", code="http://loinc.org|69453-9")["entry"][0]["resource"]
    assert cause["valueCodeableConcept"]["text"] == "急性心肌梗死" and cause["effectiveDateTime"] == "2026-08-28"
    entry = fhir(client, "EpisodeOfCare", type="urn:qiao:registry|hypertension-registry")["entry"][0]["resource"]
    assert entry["status"] == "finished" and entry["period"]["end"].startswith("2026-08-28")

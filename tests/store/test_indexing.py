"""Resource → index rows."""

from zoneinfo import ZoneInfo

from app.store.indexing import index_rows, normalise, parse_reference, values_at

ZONE = ZoneInfo("Asia/Shanghai")


def rows(resource: dict, kind: str, param: str) -> list[dict]:
    return [r for r in index_rows(resource, zone=ZONE)[kind] if r["param"] == param]


def test_choice_elements_are_found_by_their_base_name() -> None:
    observation = {"resourceType": "Observation", "effectivePeriod": {"start": "2024-01-01", "end": "2024-01-02"}}
    assert list(values_at(observation, "effective")) == [{"start": "2024-01-01", "end": "2024-01-02"}]
    assert len(rows({**observation, "status": "final", "code": {"text": "x"}}, "date", "date")) == 1


def test_name_forms() -> None:
    chinese = {"resourceType": "Patient", "name": [{"family": "欧阳", "given": ["翠花"]}]}
    assert {r["value_norm"] for r in rows(chinese, "string", "name")} == {"欧阳", "翠花", "欧阳翠花"}
    pinyin = {"resourceType": "Patient", "name": [{"family": "Zhang", "given": ["Wei"]}]}
    assert {r["value_norm"] for r in rows(pinyin, "string", "name")} == {"zhang", "wei", "zhang wei", "wei zhang"}


def test_normalise_folds_case_accents_and_width() -> None:
    assert normalise("Lǚ Zhāng") == "lu zhang"
    assert normalise("ＺＨＡＮＧ") == "zhang"


def test_tokens() -> None:
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "11010519491231002X"}],
        "active": True,
        "telecom": [{"system": "phone", "value": "13800000000"}, {"system": "email", "value": "a@b.cn"}],
    }
    assert rows(patient, "token", "identifier")[0]["code"] == "11010519491231002X"
    assert rows(patient, "token", "active")[0]["code"] == "true"
    assert [r["code"] for r in rows(patient, "token", "phone")] == ["13800000000"]


def test_references_filtered_by_target() -> None:
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Group/g1"}}
    assert rows(observation, "reference", "subject") and not rows(observation, "reference", "patient")


def test_parse_reference() -> None:
    assert parse_reference("Patient/1") == ("Patient", "1")
    assert parse_reference("Patient/1/_history/2") == ("Patient", "1")
    assert parse_reference("http://qiao/fhir/Patient/1", "http://qiao/fhir") == ("Patient", "1")
    assert parse_reference("http://elsewhere/fhir/Patient/1") == ("", "http://elsewhere/fhir/Patient/1")
    assert parse_reference("urn:uuid:1") is None
    assert parse_reference("#contained") is None

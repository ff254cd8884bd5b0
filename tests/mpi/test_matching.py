"""Resident matching end to end over HTTP: records placed under masters on every write, hard negatives kept
apart, doubtful pairs reviewed by a steward, PIXm and $match answering from the index."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.mpi import linker
from app.mpi.id_number import check_character
from tests.builders import FHIR_JSON, ID_CARD, patient

MPI = "urn:qiao:mpi"
HOSPITAL_MRN = "urn:oid:2.16.156.10011.0.1.1"
CHC_MRN = "urn:oid:2.16.156.10011.0.2.1"


def id_number(born: str, sequence: int, region: str = "110105") -> str:
    body = f"{region}{born.replace('-', '')}{sequence:03d}"
    return body + check_character(body)


def resident(family: str, given: str, born: str, *, number: str | None, mrn: tuple[str, str], phone: str = "13911112222",
             gender: str = "male", address: str = "北京市朝阳区劲松路3号楼2单元502室") -> dict[str, Any]:
    body = patient(family, given, birth_date=born, gender=gender, telecom=[{"system": "phone", "value": phone}],
                   address=[{"use": "home", "district": "朝阳区", "text": address}])
    body["identifier"] = [{"system": mrn[0], "value": mrn[1]}] + ([{"system": ID_CARD, "value": number}] if number else [])
    return body


def post(client: TestClient, body: dict[str, Any]) -> str:
    response = client.post("/fhir/Patient", json=body, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def pix(client: TestClient, identifier: str) -> dict[str, Any]:
    response = client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": identifier})
    assert response.status_code == 200, response.text
    return response.json()


def target_ids(parameters: dict[str, Any]) -> set[str]:
    return {p["valueReference"]["reference"] for p in parameters["parameter"] if p["name"] == "targetId"}


def master_of(client: TestClient, identifier: str) -> str:
    values = [p["valueIdentifier"]["value"] for p in pix(client, identifier)["parameter"]
              if p["name"] == "targetIdentifier" and p["valueIdentifier"]["system"] == MPI]
    assert len(values) == 1, values
    return str(values[0])


def test_one_person_in_two_institutions_gets_one_master(client: TestClient) -> None:
    number = id_number("1956-03-08", 31)
    hospital = post(client, resident("张", "伟", "1956-03-08", number=number, mrn=(HOSPITAL_MRN, "H001")))
    # the community centre typed a homophone, a lower-case-x-free legacy 15-digit number and a formatted phone
    legacy = number[:6] + number[8:17]
    community = post(client, resident("章", "玮", "1956-03-08", number=legacy, mrn=(CHC_MRN, "C9"), phone="+86 139 1111 2222",
                                      address="劲松路3-2-502"))
    master = master_of(client, f"{HOSPITAL_MRN}|H001")
    assert master_of(client, f"{CHC_MRN}|C9") == master
    assert target_ids(pix(client, f"{HOSPITAL_MRN}|H001")) == {f"Patient/{master}", f"Patient/{hospital}", f"Patient/{community}"}
    golden = client.get(f"/fhir/Patient/{master}").json()
    assert {link["other"]["reference"] for link in golden["link"]} == {f"Patient/{hospital}", f"Patient/{community}"}
    assert {"system": MPI, "value": master, "use": "official"} in golden["identifier"]
    assert golden["birthDate"] == "1956-03-08" and golden["gender"] == "male"
    # the sources stay as sent; searches return them, and the master only when asked for by tag
    assert client.get(f"/fhir/Patient/{community}").json()["identifier"][1]["value"] == legacy
    assert client.get("/fhir/Patient", params={"birthdate": "1956-03-08"}).json()["total"] == 2
    assert client.get("/fhir/Patient", params={"_tag": f"{MPI}|master"}).json()["total"] == 1


def test_twins_and_a_namesake_stay_apart(client: TestClient) -> None:
    born = "1990-07-01"
    post(client, resident("王", "建国", born, number=id_number(born, 11), mrn=(HOSPITAL_MRN, "T1")))
    post(client, resident("王", "建华", born, number=id_number(born, 13), mrn=(HOSPITAL_MRN, "T2")))
    # the same name, birth date, address and phone, but two valid ID numbers: two people, whatever else agrees
    post(client, resident("王", "建国", born, number=id_number(born, 15), mrn=(CHC_MRN, "N1")))
    masters = {master_of(client, f"{HOSPITAL_MRN}|T1"), master_of(client, f"{HOSPITAL_MRN}|T2"), master_of(client, f"{CHC_MRN}|N1")}
    assert len(masters) == 3
    assert client.get("/mpi/reviews").json()["reviews"] == []


def test_a_doubtful_pair_goes_to_review_and_a_steward_decides(client: TestClient) -> None:
    born = "1948-11-20"
    first = post(client, resident("李", "秀英", born, number=id_number(born, 24), mrn=(HOSPITAL_MRN, "L1"), gender="female"))
    # no ID number, another phone and address: the name and birth date alone are not enough to link
    second = post(client, resident("李", "秀英", born, number=None, mrn=(CHC_MRN, "L2"), gender="female", phone="13800001111",
                                   address="北京市朝阳区学院路9号楼1单元101室"))
    assert master_of(client, f"{HOSPITAL_MRN}|L1") != master_of(client, f"{CHC_MRN}|L2")
    queue = client.get("/mpi/reviews").json()["reviews"]
    assert [(r["patient"], r["master"]) for r in queue] == [(f"Patient/{second}", f"Patient/{master_of(client, f'{HOSPITAL_MRN}|L1')}")]
    assert queue[0]["comparisons"]["name"] == "same characters"
    decided = client.post(f"/mpi/reviews/{queue[0]['id']}", json={"decision": "same", "note": "confirmed by phone"})
    assert decided.status_code == 200, decided.text
    assert master_of(client, f"{CHC_MRN}|L2") == master_of(client, f"{HOSPITAL_MRN}|L1")
    assert target_ids(pix(client, f"{CHC_MRN}|L2")) >= {f"Patient/{first}", f"Patient/{second}"}
    again = client.post(f"/mpi/reviews/{queue[0]['id']}", json={"decision": "different"})
    assert again.status_code == 409 and again.json()["resourceType"] == "OperationOutcome"


def test_match_scores_and_grades_candidates(client: TestClient) -> None:
    born = "1972-02-14"
    number = id_number(born, 57)
    post(client, resident("欧阳", "翠花", born, number=number, mrn=(HOSPITAL_MRN, "O1"), gender="female"))
    query = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": resident(
        "欧阳", "翠花", born, number=number[:10] + number[11] + number[10] + number[12:], mrn=(CHC_MRN, "x"), gender="female")}]}
    bundle = client.post("/fhir/Patient/$match", json=query, headers=FHIR_JSON).json()
    assert bundle["total"] == 1
    entry = bundle["entry"][0]
    assert entry["search"]["score"] > 0.99
    assert entry["search"]["extension"][0]["valueCode"] == "probable"  # a transposed ID number: no "certain"
    bad = client.post("/fhir/Patient/$match", json={"resourceType": "Parameters"}, headers=FHIR_JSON)
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("block_limit", [3, 2])
def test_a_phone_shared_by_more_residents_than_the_block_limit_finds_no_candidates(
        client: TestClient, monkeypatch: pytest.MonkeyPatch, block_limit: int) -> None:
    monkeypatch.setattr(linker, "BLOCK_LIMIT", block_limit)
    for i, (family, given) in enumerate([("王", "芳"), ("李", "强"), ("赵", "丽")]):  # three residents giving a clinic's number
        born = f"196{i}-05-0{i + 1}"
        post(client, resident(family, given, born, number=id_number(born, 11 + 2 * i), mrn=(HOSPITAL_MRN, f"P{i}"), phone="01065550000"))
    # found only under the phone (no birth date, ID number or address to block on)
    query = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {
        "resourceType": "Patient", "name": [{"family": "王", "given": ["芳"], "text": "王芳"}],
        "telecom": [{"system": "phone", "value": "010-6555-0000"}]}}]}
    bundle = client.post("/fhir/Patient/$match", json=query, headers=FHIR_JSON).json()
    assert bundle["total"] == (3 if block_limit == 3 else 0), bundle


def test_an_id_number_mistyped_in_its_second_half_is_found_by_its_first_half_and_the_name(client: TestClient) -> None:
    born = "1981-06-23"
    number = id_number(born, 64)
    post(client, resident("上官", "婉儿", born, number=number, mrn=(HOSPITAL_MRN, "H1"), gender="female"))
    # the same region and birth decade, the same surname, another given name: not under the first half's key
    post(client, resident("上官", "明", "1983-02-02", number=id_number("1983-02-02", 11), mrn=(HOSPITAL_MRN, "H2"),
                          phone="13700001111", address="北京市朝阳区学院路1号楼1单元101室"))
    # a sequence digit mistyped (so no birth date from the number either), no birth date, phone or address
    typo = number[:15] + str((int(number[15]) + 1) % 10) + number[16:]
    body = {k: v for k, v in resident("上官", "婉儿", born, number=typo, mrn=(CHC_MRN, "x"), gender="female").items()
            if k not in ("birthDate", "telecom", "address")}
    bundle = client.post("/fhir/Patient/$match", json={"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": body}]},
                         headers=FHIR_JSON).json()
    assert [entry["resource"]["id"] for entry in bundle["entry"]] == [master_of(client, f"{HOSPITAL_MRN}|H1")], bundle


def test_masters_are_the_index_own(client: TestClient) -> None:
    post(client, resident("赵", "敏", "1985-01-01", number=id_number("1985-01-01", 42), mrn=(HOSPITAL_MRN, "Z1"), gender="female"))
    master = master_of(client, f"{HOSPITAL_MRN}|Z1")
    forged = patient("赵", "敏", meta={"tag": [{"system": MPI, "code": "master"}]})
    assert client.post("/fhir/Patient", json=forged, headers=FHIR_JSON).status_code == 403
    assert client.delete(f"/fhir/Patient/{master}").status_code == 403
    assert client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{HOSPITAL_MRN}|nobody"}).status_code == 404


def unreachable(body: dict[str, Any]) -> dict[str, Any]:
    """The record without phone and address: only the name, birth date and sex can link it."""
    return {k: v for k, v in body.items() if k not in ("telecom", "address")}


def test_a_rare_name_born_the_same_day_links_alone_a_common_one_goes_to_review(client: TestClient) -> None:
    born = "1962-04-17"
    post(client, resident("欧阳", "翠花", born, number=id_number(born, 42), mrn=(HOSPITAL_MRN, "R1"), gender="female"))
    post(client, unreachable(resident("欧阳", "翠花", born, number=None, mrn=(CHC_MRN, "R2"), gender="female")))
    assert master_of(client, f"{HOSPITAL_MRN}|R1") == master_of(client, f"{CHC_MRN}|R2")
    # forty residents called 张伟 (of the 10,000 the index assumes at least): a namesake born the same day is too
    # likely to link on the name and birth date alone
    namesakes = [resident("张", "伟", f"19{50 + i}-01-0{1 + i % 9}", number=id_number(f"19{50 + i}-01-0{1 + i % 9}", 101 + 2 * i),
                          mrn=(HOSPITAL_MRN, f"Z{i}"), phone=f"1390000{i:04d}", address=f"北京市朝阳区学院路{i + 1}号楼1单元101室")
                 for i in range(40)]
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": body, "request": {"method": "POST", "url": "Patient"}} for body in namesakes]}
    assert client.post("/fhir", json=bundle, headers=FHIR_JSON).status_code == 200
    post(client, resident("张", "伟", born, number=id_number(born, 71), mrn=(HOSPITAL_MRN, "C1")))
    common = post(client, unreachable(resident("张", "伟", born, number=None, mrn=(CHC_MRN, "C2"))))
    assert master_of(client, f"{HOSPITAL_MRN}|C1") != master_of(client, f"{CHC_MRN}|C2")
    queue = client.get("/mpi/reviews").json()["reviews"]
    assert [(r["patient"], r["master"]) for r in queue] == [(f"Patient/{common}", f"Patient/{master_of(client, f'{HOSPITAL_MRN}|C1')}")]


def test_a_spouse_sharing_phone_and_home_is_not_even_reviewed(client: TestClient) -> None:
    born = "1958-09-02"
    post(client, resident("刘", "建军", born, number=id_number(born, 55), mrn=(HOSPITAL_MRN, "S1")))
    wife = resident("陈", "桂兰", "1960-02-11", number=None, mrn=(CHC_MRN, "S2"), gender="female", address="劲松路3-2-502")
    post(client, {k: v for k, v in wife.items() if k != "birthDate"})  # a community centre that did not record it
    assert master_of(client, f"{HOSPITAL_MRN}|S1") != master_of(client, f"{CHC_MRN}|S2")
    assert client.get("/mpi/reviews").json()["reviews"] == []


@pytest.mark.parametrize(("address", "same_home"), [("劲松路3-2-502", True), ("学院路3-2-502", False)])
def test_a_record_without_birth_date_or_id_number_is_found_by_name_and_dwelling_on_its_street(
        client: TestClient, address: str, same_home: bool) -> None:
    # the first record lives at 劲松路3号楼2单元502室; the same flat numbers on another street are another home
    born = "1971-12-30"
    post(client, resident("司马", "晓燕", born, number=id_number(born, 88), mrn=(HOSPITAL_MRN, "D1"), gender="female"))
    other = resident("司马", "晓燕", born, number=None, mrn=(CHC_MRN, "D2"), gender="female", phone="13655556666",
                     address=address)
    post(client, {k: v for k, v in other.items() if k != "birthDate"})
    assert (master_of(client, f"{HOSPITAL_MRN}|D1") == master_of(client, f"{CHC_MRN}|D2")) is same_home


def test_the_same_id_number_under_a_wholly_different_name_goes_to_review(client: TestClient) -> None:
    born = "1966-05-09"
    number = id_number(born, 35, region="110108")
    post(client, resident("孙", "志强", born, number=number, mrn=(HOSPITAL_MRN, "K1")))
    # the number agrees, and with it the birth date and sex it holds; the name does not: a number keyed for the
    # wrong person (a relative's, the previous form's) is doubtful, not a link
    second = post(client, resident("黄", "海涛", born, number=number, mrn=(CHC_MRN, "K2")))
    assert master_of(client, f"{HOSPITAL_MRN}|K1") != master_of(client, f"{CHC_MRN}|K2")
    queue = client.get("/mpi/reviews").json()["reviews"]
    assert [(r["patient"], r["master"]) for r in queue] == [(f"Patient/{second}", f"Patient/{master_of(client, f'{HOSPITAL_MRN}|K1')}")]


def test_a_name_written_down_by_ear_without_zh_or_ng_is_the_same_sound(client: TestClient) -> None:
    born = "1953-10-21"
    number = id_number(born, 27)
    post(client, resident("陈", "建国", born, number=number, mrn=(HOSPITAL_MRN, "E1")))
    # chen / cheng / ceng, as a clerk from the south hears them: with the ID number, and without it in pinyin
    # (found by the surname's sound and the birth date, linked on phone and home)
    post(client, resident("程", "建国", born, number=number, mrn=(CHC_MRN, "E2")))
    post(client, resident("CENG", "JIANGUO", born, number=None, mrn=(CHC_MRN, "E3")))
    assert master_of(client, f"{HOSPITAL_MRN}|E1") == master_of(client, f"{CHC_MRN}|E2") == master_of(client, f"{CHC_MRN}|E3")
    assert client.get("/mpi/reviews").json()["reviews"] == []


def test_a_record_does_not_join_a_master_holding_someone_born_another_year(client: TestClient) -> None:
    # 王鹏 born 1969 and a record of him without birth date or ID number (his home and phone): one master
    post(client, resident("王", "鹏", "1969-08-12", number=id_number("1969-08-12", 13), mrn=(HOSPITAL_MRN, "W1")))
    undated = resident("王", "鹏", "1969-08-12", number=None, mrn=(CHC_MRN, "W2"))
    post(client, {k: v for k, v in undated.items() if k != "birthDate"})
    father = master_of(client, f"{HOSPITAL_MRN}|W1")
    assert master_of(client, f"{CHC_MRN}|W2") == father
    # another 王鹏 of that home, born 1949: he agrees with the undated record, not with the master's other record
    elder = post(client, resident("王", "鹏", "1949-03-02", number=None, mrn=(CHC_MRN, "W3")))
    assert master_of(client, f"{CHC_MRN}|W3") != father
    queue = client.get("/mpi/reviews").json()["reviews"]
    assert [(r["patient"], r["master"]) for r in queue] == [(f"Patient/{elder}", f"Patient/{father}")]

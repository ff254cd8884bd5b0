"""What a data steward does (merge and unmerge, over HTTP and with `qiao mpi`) and what a HIS does (ADT^A40):
reversible, audited, and never joining two people whose valid ID numbers differ."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import cli
from app.auth import audit_store
from app.mpi.features import INSURANCE_SYSTEM as INSURANCE
from tests.builders import FHIR_JSON
from tests.ingest.messages import ID_CARD, adt
from tests.mpi.test_matching import CHC_MRN, HOSPITAL_MRN, id_number, master_of, pix, post, resident, target_ids

HIS_MRN = "urn:oid:2.16.156.10011.1.11.1001"  # dongcheng-hospital's patient numbers (mappings/sources.yaml)


def doubtful_pair(client: TestClient) -> tuple[str, str]:
    """Two records of 李秀英 the index keeps apart (no ID number on the second, another phone and address)."""
    born = "1948-11-20"
    first = post(client, resident("李", "秀英", born, number=id_number(born, 24), mrn=(HOSPITAL_MRN, "L1"), gender="female"))
    second = post(client, resident("李", "秀英", born, number=None, mrn=(CHC_MRN, "L2"), gender="female", phone="13800001111",
                                   address="北京市朝阳区学院路9号楼1单元101室"))
    assert master_of(client, f"{HOSPITAL_MRN}|L1") != master_of(client, f"{CHC_MRN}|L2")
    return first, second


def steward(client: TestClient, action: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = client.post(f"/mpi/{action}", json=body)
    assert response.status_code == status, response.text
    return dict(response.json())


def test_a_steward_merges_two_residents_and_unmerges_them_again(client: TestClient) -> None:
    first, second = doubtful_pair(client)
    kept, retiring = master_of(client, f"{HOSPITAL_MRN}|L1"), master_of(client, f"{CHC_MRN}|L2")
    merged = steward(client, "merge", {"source": f"Patient/{second}", "target": f"Patient/{kept}", "note": "same resident, per GP"})
    assert merged["master"] == f"Patient/{kept}" and merged["records"] == sorted([f"Patient/{first}", f"Patient/{second}"])
    assert master_of(client, f"{CHC_MRN}|L2") == kept
    retired = client.get(f"/fhir/Patient/{retiring}").json()  # references to it still resolve, forward to the survivor
    assert retired["active"] is False and retired["link"] == [{"other": {"reference": f"Patient/{kept}"}, "type": "replaced-by"}]
    assert client.get("/mpi/reviews").json()["reviews"] == []  # the merge settled the pair waiting for review

    parted = steward(client, "unmerge", {"patient": [f"Patient/{second}"], "note": "two people after all"})
    assert parted["master"] == f"Patient/{retiring}" and parted["records"] == [f"Patient/{second}"]  # its old master again
    assert target_ids(pix(client, f"{HOSPITAL_MRN}|L1")) == {f"Patient/{kept}", f"Patient/{first}"}
    assert client.get(f"/fhir/Patient/{retiring}").json()["active"] is True
    # the steward's word stands: the record now carrying the first one's phone and address is not matched back
    body = resident("李", "秀英", "1948-11-20", number=None, mrn=(CHC_MRN, "L2"), gender="female") | {"id": second}
    assert client.put(f"/fhir/Patient/{second}", json=body, headers=FHIR_JSON).status_code == 200
    assert master_of(client, f"{CHC_MRN}|L2") == retiring

    audit_store.flush()
    events = client.get("/fhir/AuditEvent", params={"entity": f"Patient/{second}", "_count": "100"}).json()["entry"]
    assert {"resident merge", "resident unmerge"} <= {e["resource"].get("outcomeDesc") for e in events}


def test_a_merge_of_two_valid_id_numbers_is_refused(client: TestClient) -> None:
    born = "1990-07-01"
    post(client, resident("王", "建国", born, number=id_number(born, 11), mrn=(HOSPITAL_MRN, "T1")))
    twin = post(client, resident("王", "建华", born, number=id_number(born, 13), mrn=(HOSPITAL_MRN, "T2")))
    refused = steward(client, "merge", {"source": f"Patient/{twin}", "target": f"Patient/{master_of(client, f'{HOSPITAL_MRN}|T1')}"}, 409)
    assert refused["resourceType"] == "OperationOutcome" and "different valid ID numbers" in refused["issue"][0]["diagnostics"]
    assert steward(client, "merge", {"source": f"Patient/{twin}", "target": f"Patient/{twin}"}, 409)["resourceType"] == "OperationOutcome"
    assert steward(client, "merge", {"source": "Patient/nobody", "target": f"Patient/{twin}"}, 404)["issue"][0]["expression"] == ["source"]
    assert steward(client, "unmerge", {"patient": [f"Patient/{twin}"]}, 409)["resourceType"] == "OperationOutcome"  # alone already
    assert steward(client, "unmerge", {}, 400)["resourceType"] == "OperationOutcome"


def hl7(client: TestClient, text: str) -> bytes:
    response = client.post("/ingest/hl7v2", params={"source": "dongcheng-hospital"}, content=text.encode("gb18030"),
                           headers={"Content-Type": "x-application/hl7-v2+er7"})
    assert response.status_code == 200, response.content
    assert b"MSA|AA" in response.content, response.content
    return response.content


def a40(survivor: str, merged: str, control_id: str, id_card: str = ID_CARD) -> str:
    """ADT^A40: the HIS merged its record `merged` into `survivor` (PID as in the A04)."""
    admitted = adt("A40", control_id=control_id, mrn=survivor, id_card=id_card).split("\r")
    return "\r".join([admitted[0].replace("ADT^A40^ADT_A01", "ADT^A40^ADT_A39"), admitted[1], admitted[2], f"MRG|{merged}^^^DCH^MR"]) + "\r"


def test_a_his_merge_message_makes_its_two_records_one_resident(client: TestClient) -> None:
    hl7(client, adt(control_id="M1", mrn="MZ1001"))
    # registered again at another desk: a name misheard (章丹 for 张三), no ID number, another visit
    hl7(client, adt(control_id="M2", mrn="MZ1002", family="章", given="丹", id_card="", visit="V2002"))
    assert master_of(client, f"{HIS_MRN}|MZ1001") != master_of(client, f"{HIS_MRN}|MZ1002")
    hl7(client, a40("MZ1001", "MZ1002", "M3"))
    assert master_of(client, f"{HIS_MRN}|MZ1001") == master_of(client, f"{HIS_MRN}|MZ1002")
    merged = client.get("/fhir/Patient", params={"identifier": f"{HIS_MRN}|MZ1002"}).json()["entry"][0]["resource"]
    survivor = client.get("/fhir/Patient", params={"identifier": f"{HIS_MRN}|MZ1001"}).json()["entry"][0]["resource"]
    assert merged["active"] is False and merged["link"] == [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    assert merged["name"][0]["text"] == "章丹"  # amended, not replaced: the source record keeps what it said
    hl7(client, a40("MZ1001", "MZ9999", "M4"))  # a record Qiao never had: nothing to merge, nothing made
    assert client.get("/fhir/Patient", params={"identifier": f"{HIS_MRN}|MZ9999"}).json()["total"] == 0


def test_a_his_merge_of_two_valid_id_numbers_goes_to_review(client: TestClient) -> None:
    hl7(client, adt(control_id="N1", mrn="MZ2001", id_card=id_number("1949-12-31", 111)))
    hl7(client, adt(control_id="N2", mrn="MZ2002", given="山", id_card=id_number("1949-12-31", 357), visit="V2003"))
    hl7(client, a40("MZ2001", "MZ2002", "N3", id_card=id_number("1949-12-31", 111)))
    assert master_of(client, f"{HIS_MRN}|MZ2001") != master_of(client, f"{HIS_MRN}|MZ2002")
    queue = client.get("/mpi/reviews").json()["reviews"]
    assert len(queue) == 1 and "different valid ID numbers" in queue[0]["note"]


def test_the_steward_command(client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = doubtful_pair(client)
    assert cli.main(["mpi", "review"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 1 and listed[0].split("\t")[1] == f"Patient/{second}"
    review_id = listed[0].split("\t")[0]
    assert cli.main(["mpi", "review", review_id]) == 2  # neither --same nor --different
    assert cli.main(["mpi", "review", review_id, "--same", "--note", "checked"]) == 0
    assert master_of(client, f"{CHC_MRN}|L2") == master_of(client, f"{HOSPITAL_MRN}|L1")
    capsys.readouterr()
    assert cli.main(["mpi", "unmerge", second]) == 0
    assert capsys.readouterr().out.splitlines()[0].split("\t")[1] == f"Patient/{second}"  # its own master, alone
    assert master_of(client, f"{CHC_MRN}|L2") != master_of(client, f"{HOSPITAL_MRN}|L1")
    assert cli.main(["mpi", "merge", second, first]) == 0
    assert master_of(client, f"{CHC_MRN}|L2") == master_of(client, f"{HOSPITAL_MRN}|L1")
    assert cli.main(["mpi", "merge", second, "nobody"]) == 2


def test_a_record_never_joins_a_master_holding_another_person_through_one_of_its_records(client: TestClient,
                                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Records are not linked by a chain of matches: 李四 (valid ID number) matches a record a steward filed under
    张三, whose own record carries another valid ID number, so 李四 gets a master of his own, online and in a rebuild."""
    zhang_born, li_born = "1961-05-06", "1975-09-10"
    post(client, resident("张", "三", zhang_born, number=id_number(zhang_born, 31), mrn=(HOSPITAL_MRN, "Z1"), phone="13900000001"))
    li = resident("李", "四", li_born, number=None, mrn=(CHC_MRN, "Z2"), phone="13900000002", address="北京市朝阳区学院路9号楼1单元101室")
    filed = post(client, li | {"identifier": li["identifier"] + [{"system": INSURANCE, "value": "11010500042"}]})
    zhang = master_of(client, f"{HOSPITAL_MRN}|Z1")
    steward(client, "merge", {"source": f"Patient/{filed}", "target": f"Patient/{zhang}", "note": "filed under 张三 (wrongly)"})

    later = resident("李", "四", li_born, number=id_number(li_born, 57, region="110108"), mrn=(HIS_MRN, "Z3"), phone="13900000002",
                     address="北京市朝阳区学院路9号楼1单元101室")
    post(client, later | {"identifier": later["identifier"] + [{"system": INSURANCE, "value": "11010500042"}]})
    assert master_of(client, f"{HIS_MRN}|Z3") != zhang
    assert master_of(client, f"{CHC_MRN}|Z2") == zhang
    assert cli.main(["mpi", "rebuild"]) == 0
    assert master_of(client, f"{HIS_MRN}|Z3") != zhang
    assert master_of(client, f"{CHC_MRN}|Z2") == zhang  # the steward's placement stands

"""Residents arriving in batches: a transaction Bundle is matched as a whole (two records of one person in one
Bundle find each other), and institutions sending overlapping batches at the same time neither deadlock nor split a
person into two masters."""

import random
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier
from typing import Any

import httpx
from fastapi.testclient import TestClient

from tests.builders import FHIR_JSON
from tests.mpi.test_matching import CHC_MRN, HOSPITAL_MRN, id_number, master_of, resident

PEOPLE = [("刘", "洋", "1961-04-02", 11), ("陈", "静", "1975-09-30", 22), ("杨", "帆", "1983-12-12", 33),
          ("黄", "磊", "1950-01-19", 44), ("周", "敏", "1969-06-06", 52), ("吴", "刚", "1992-03-15", 67)]


def transaction(patients: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [{"resource": p, "request": {"method": "POST", "url": "Patient"}} for p in patients]}


def record(person: tuple[str, str, str, int], mrn: tuple[str, str]) -> dict[str, Any]:
    family, given, born, sequence = person
    return resident(family, given, born, number=id_number(born, sequence), mrn=mrn, phone=f"1390000{sequence:04d}",
                    gender="male" if sequence % 2 else "female")


def test_two_records_of_one_person_in_one_bundle_share_a_master(client: TestClient) -> None:
    person = PEOPLE[0]
    response = client.post("/fhir", json=transaction([record(person, (HOSPITAL_MRN, "B1")), record(person, (CHC_MRN, "B2"))]),
                           headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    assert master_of(client, f"{HOSPITAL_MRN}|B1") == master_of(client, f"{CHC_MRN}|B2")
    golden = client.get(f"/fhir/Patient/{master_of(client, f'{HOSPITAL_MRN}|B1')}").json()
    assert len(golden["link"]) == 2


def test_overlapping_batches_at_once_neither_deadlock_nor_split_a_person(server_url: str) -> None:
    senders = 6
    barrier = Barrier(senders)

    def send(n: int) -> httpx.Response:
        people = PEOPLE[:]
        random.Random(n).shuffle(people)  # each institution lists the same residents in another order
        bundle = transaction([record(person, (f"urn:oid:2.16.156.10011.0.9.{n}", f"M{person[3]}")) for person in people])
        with httpx.Client(timeout=60) as http:
            barrier.wait()
            return http.post(server_url, json=bundle, headers=FHIR_JSON)

    with ThreadPoolExecutor(senders) as pool:
        responses = list(pool.map(send, range(senders)))
    assert [r.status_code for r in responses] == [200] * senders, [r.text for r in responses if r.status_code != 200]
    with httpx.Client(base_url=server_url, timeout=30) as http:
        for person in PEOPLE:
            masters = set()
            for n in range(senders):
                found = http.get("/Patient/$ihe-pix", params={"sourceIdentifier": f"urn:oid:2.16.156.10011.0.9.{n}|M{person[3]}",
                                                              "targetSystem": "urn:qiao:mpi"}).json()
                masters |= {p["valueIdentifier"]["value"] for p in found["parameter"] if p["name"] == "targetIdentifier"}
            assert len(masters) == 1, (person, masters)
        assert http.get("/Patient", params={"_tag": "urn:qiao:mpi|master", "_total": "accurate"}).json()["total"] == len(PEOPLE)

"""Searching by resident (`:mdm`): one reference stands for the master and all its source records, so a hospital
sees a resident's blood pressures whichever institution's record they were written against."""

from fastapi.testclient import TestClient

from tests.builders import FHIR_JSON, blood_pressure
from tests.mpi.test_matching import CHC_MRN, HOSPITAL_MRN, id_number, master_of, post, resident


def ids(client: TestClient, query: str) -> set[str]:
    response = client.get(f"/fhir/Observation?{query}")
    assert response.status_code == 200, response.text
    return {entry["resource"]["id"] for entry in response.json().get("entry", [])}


def observe(client: TestClient, patient_id: str, systolic: float) -> str:
    response = client.post("/fhir/Observation", json=blood_pressure(f"Patient/{patient_id}", systolic), headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_search_by_resident_finds_what_every_source_record_holds(client: TestClient) -> None:
    number = id_number("1950-01-20", 41)
    hospital = post(client, resident("李", "秀英", "1950-01-20", number=number, mrn=(HOSPITAL_MRN, "M1"), gender="female"))
    community = post(client, resident("李", "秀英", "1950-01-20", number=number, mrn=(CHC_MRN, "M2"), gender="female"))
    neighbour = post(client, resident("赵", "强", "1949-07-07", number=id_number("1949-07-07", 11), mrn=(CHC_MRN, "M3")))
    master = master_of(client, f"{HOSPITAL_MRN}|M1")
    assert master_of(client, f"{CHC_MRN}|M2") == master
    at_hospital, at_centre = observe(client, hospital, 162), observe(client, community, 148)
    observe(client, neighbour, 120)

    assert ids(client, f"subject=Patient/{hospital}") == {at_hospital}
    both = {at_hospital, at_centre}
    assert ids(client, f"subject:mdm=Patient/{hospital}") == both
    assert ids(client, f"patient:mdm=Patient/{community}") == both
    assert ids(client, f"patient:mdm={master}") == both
    assert ids(client, f"patient:mdm=Patient/{hospital},Patient/{neighbour}&code=85354-9") == both | ids(client, f"patient={neighbour}")


def test_mdm_expands_patients_only(client: TestClient) -> None:
    response = client.get("/fhir/Observation?performer:mdm=Practitioner/p1")
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["performer:mdm"]

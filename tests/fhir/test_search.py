"""Search over HTTP: the parameter types, modifiers, chains, includes, sorting and paging."""

from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tests.builders import FHIR_JSON, ID_CARD, blood_pressure, patient


def post(client: TestClient, resource: dict) -> dict:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return response.json()


def ids(client: TestClient, query: str, mode: str = "match") -> list[str]:
    response = client.get(f"/fhir/{query}")
    assert response.status_code == 200, response.text
    return [e["resource"]["id"] for e in response.json().get("entry", []) if e["search"]["mode"] == mode]


@pytest.fixture
def residents(client: TestClient) -> dict[str, dict]:
    return {
        "zhang_wei": post(client, patient("张", "伟", id_card="11010519491231002X", birth_date="1949-12-31")),
        "zhang_san": post(client, patient("张", "三", birth_date="1980-05-01")),
        "ouyang": post(client, patient("欧阳", "翠花", birth_date="1980-05-20", gender="female")),
        "pinyin": post(client, patient("ZHANG", "WEI", birth_date="1990-01-01")),
    }


def test_identifier_token_forms(client: TestClient, residents: dict[str, dict]) -> None:
    zhang = residents["zhang_wei"]["id"]
    assert ids(client, f"Patient?identifier={quote(ID_CARD)}|11010519491231002X") == [zhang]
    assert ids(client, "Patient?identifier=11010519491231002X") == [zhang]
    assert ids(client, f"Patient?identifier={quote(ID_CARD)}|") == [zhang]
    assert ids(client, "Patient?identifier=other|11010519491231002X") == []
    assert set(ids(client, "Patient?identifier:missing=true")) == {residents[k]["id"] for k in ("zhang_san", "ouyang", "pinyin")}


def test_chinese_names(client: TestClient, residents: dict[str, dict]) -> None:
    zw, zs, oy, py = (residents[k]["id"] for k in ("zhang_wei", "zhang_san", "ouyang", "pinyin"))
    assert set(ids(client, "Patient?name=张")) == {zw, zs}
    assert ids(client, "Patient?name=张伟") == [zw]
    assert ids(client, "Patient?name=欧阳翠花") == [oy]
    assert ids(client, "Patient?family=欧阳") == [oy]
    assert ids(client, "Patient?given=翠花") == [oy]
    assert ids(client, "Patient?name:contains=翠") == [oy]
    assert ids(client, "Patient?name:exact=张伟") == [zw]
    assert set(ids(client, "Patient?name=zhang wei")) == {py}  # case-insensitive, family-first pinyin
    assert ids(client, "Patient?name:exact=zhang") == []  # :exact is case-sensitive
    assert set(ids(client, "Patient?name=张伟,欧阳")) == {zw, oy}  # comma is OR


def test_date_prefixes_and_partial_dates(client: TestClient, residents: dict[str, dict]) -> None:
    zw, zs, oy, py = (residents[k]["id"] for k in ("zhang_wei", "zhang_san", "ouyang", "pinyin"))
    assert set(ids(client, "Patient?birthdate=1980")) == {zs, oy}
    assert set(ids(client, "Patient?birthdate=1980-05")) == {zs, oy}
    assert ids(client, "Patient?birthdate=1980-05-01") == [zs]
    assert set(ids(client, "Patient?birthdate=ne1980-05-01")) == {zw, oy, py}
    assert set(ids(client, "Patient?birthdate=gt1980-05-01")) == {oy, py}
    assert set(ids(client, "Patient?birthdate=ge1980-05-01")) == {zs, oy, py}
    assert ids(client, "Patient?birthdate=lt1980") == [zw]
    assert set(ids(client, "Patient?birthdate=le1980-05-20")) == {zw, zs, oy}
    assert ids(client, "Patient?birthdate=sa1980") == [py]
    assert ids(client, "Patient?birthdate=eb1950") == [zw]
    assert set(ids(client, "Patient?birthdate=ge1980&birthdate=lt1990")) == {zs, oy}  # repeated is AND
    assert ids(client, "Patient?birthdate=ap1990-01-02") == [py]


def test_search_times_without_offset_are_shanghai(client: TestClient, residents: dict[str, dict]) -> None:
    ref = f"Patient/{residents['zhang_wei']['id']}"
    early = post(client, blood_pressure(ref, when="2026-02-28T23:30:00Z"))  # 07:30 on 1 March in Shanghai
    assert ids(client, "Observation?date=2026-03-01") == [early["id"]]  # the local day
    assert ids(client, "Observation?date=2026-02-28") == []
    assert ids(client, "Observation?date=ge2026-03-01T07:30:00") == [early["id"]]
    assert ids(client, "Observation?date=gt2026-03-01T07:30:00") == []
    assert ids(client, f"Observation?date=lt{quote('2026-03-01T00:00:00Z')}") == [early["id"]]


def test_token_gender_code_category(client: TestClient, residents: dict[str, dict]) -> None:
    assert ids(client, "Patient?gender=female") == [residents["ouyang"]["id"]]
    obs = post(client, blood_pressure(f"Patient/{residents['zhang_wei']['id']}"))
    assert ids(client, "Observation?code=http://loinc.org|85354-9") == [obs["id"]]
    assert ids(client, "Observation?category=vital-signs&status=final") == [obs["id"]]
    assert ids(client, "Observation?code=http://loinc.org|8480-6") == []
    assert ids(client, "Observation?component-code=8480-6") == [obs["id"]]
    assert ids(client, "Observation?status:not=final") == []


def test_references_and_chains(client: TestClient, residents: dict[str, dict]) -> None:
    zw, zs = residents["zhang_wei"]["id"], residents["zhang_san"]["id"]
    first = post(client, blood_pressure(f"Patient/{zw}"))
    post(client, blood_pressure(f"Patient/{zs}"))
    assert ids(client, f"Observation?subject=Patient/{zw}") == [first["id"]]
    assert ids(client, f"Observation?patient={zw}") == [first["id"]]
    assert ids(client, f"Observation?subject:Patient={zw}") == [first["id"]]
    assert ids(client, f"Observation?subject=http://testserver/fhir/Patient/{zw}") == [first["id"]]
    chained = f"Observation?subject:Patient.identifier={quote(ID_CARD)}|11010519491231002X"
    assert ids(client, chained) == [first["id"]]
    assert ids(client, "Observation?patient.name=张伟") == [first["id"]]
    assert client.get("/fhir/Observation?subject.name=x").status_code == 400  # a chain needs a target type


def test_include_and_revinclude(client: TestClient, residents: dict[str, dict]) -> None:
    zw = residents["zhang_wei"]["id"]
    obs = post(client, blood_pressure(f"Patient/{zw}"))
    assert ids(client, "Observation?_include=Observation:patient", "include") == [zw]
    assert ids(client, f"Patient?_id={zw}&_revinclude=Observation:patient", "include") == [obs["id"]]
    assert ids(client, f"Patient?_id={zw}&_revinclude=*:subject", "include") == [obs["id"]]
    request = post(client, {"resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": {"reference": f"Patient/{zw}"}})
    task = post(client, {"resourceType": "Task", "status": "requested", "intent": "order",
                         "focus": {"reference": f"ServiceRequest/{request['id']}"}, "for": {"reference": f"Patient/{zw}"},
                         "owner": {"reference": "Organization/hosp-1"}})
    assert ids(client, "Task?_include=Task:focus", "include") == [request["id"]]
    assert ids(client, "ServiceRequest?_revinclude=Task:focus") == [request["id"]]
    assert ids(client, "ServiceRequest?_revinclude=Task:focus", "include") == [task["id"]]
    assert ids(client, f"Task?patient={zw}") == [task["id"]]


def test_sort(client: TestClient, residents: dict[str, dict]) -> None:
    by_birth = ids(client, "Patient?_sort=birthdate")
    assert by_birth == [residents[k]["id"] for k in ("zhang_wei", "zhang_san", "ouyang", "pinyin")]
    assert ids(client, "Patient?_sort=-birthdate") == list(reversed(by_birth))
    assert ids(client, "Patient?_sort=_lastUpdated") == [residents[k]["id"] for k in ("zhang_wei", "zhang_san", "ouyang", "pinyin")]
    assert client.get("/fhir/Patient?_sort=nonsense").status_code == 400


def test_paging_stays_correct_while_data_changes(client: TestClient) -> None:
    created = [post(client, patient(given=f"{i:02d}"))["id"] for i in range(7)]
    page = client.get("/fhir/Patient?_count=3&_sort=given").json()
    seen = [e["resource"]["id"] for e in page["entry"]]
    client.delete(f"/fhir/Patient/{created[0]}")  # already seen
    post(client, patient(given="00"))  # sorts before the cursor: must not reappear or shift the pages
    while next_link := next((l["url"] for l in page["link"] if l["relation"] == "next"), None):
        page = client.get(next_link).json()
        seen += [e["resource"]["id"] for e in page["entry"]]
    assert seen == created


def test_counts_and_totals(client: TestClient, residents: dict[str, dict]) -> None:
    summary = client.get("/fhir/Patient?_summary=count").json()
    assert summary["total"] == 4
    assert not summary.get("entry")
    page = client.get("/fhir/Patient?_count=2&_total=accurate").json()
    assert page["total"] == 4 and len(page["entry"]) == 2
    assert "total" not in client.get("/fhir/Patient?_count=2&_total=none").json()
    assert client.get("/fhir/Patient?name=张").json()["total"] == 2


def test_last_updated_and_id(client: TestClient, residents: dict[str, dict]) -> None:
    last = residents["pinyin"]["meta"]["lastUpdated"]
    first = residents["zhang_wei"]["meta"]["lastUpdated"]
    assert residents["pinyin"]["id"] not in ids(client, f"Patient?_lastUpdated=gt{quote(last)}")
    assert residents["zhang_wei"]["id"] in ids(client, f"Patient?_lastUpdated=ge{quote(first)}")
    assert ids(client, f"Patient?_id={residents['ouyang']['id']}") == [residents["ouyang"]["id"]]


def test_unknown_parameter_is_400_or_ignored_when_lenient(client: TestClient, residents: dict[str, dict]) -> None:
    strict = client.get("/fhir/Patient?nickname=x")
    assert strict.status_code == 400
    assert strict.json()["issue"][0]["expression"] == ["nickname"]
    lenient = client.get("/fhir/Patient?nickname=x&gender=female", headers={"Prefer": "handling=lenient"})
    assert lenient.status_code == 200
    assert [e["resource"]["id"] for e in lenient.json()["entry"]] == [residents["ouyang"]["id"]]
    assert "nickname" not in lenient.json()["link"][0]["url"]
    assert client.get("/fhir/Patient?birthdate=yesterday").status_code == 400


def test_search_by_post(client: TestClient, residents: dict[str, dict]) -> None:
    response = client.post("/fhir/Patient/_search", data={"gender": "female"})
    assert [e["resource"]["id"] for e in response.json()["entry"]] == [residents["ouyang"]["id"]]


def test_every_resource_type_is_searchable(client: TestClient) -> None:
    for resource_type in ("Patient", "Observation", "Task", "Group", "Measure", "Consent", "ImagingStudy"):
        assert client.get(f"/fhir/{resource_type}").status_code == 200
    assert client.get("/fhir/NotAType").status_code == 404


def test_elements_subsets_the_matches(client: TestClient, residents: dict[str, dict]) -> None:
    bundle = client.get(f"/fhir/Patient?_id={residents['ouyang']['id']}&_elements=gender").json()
    resource = bundle["entry"][0]["resource"]
    assert resource["gender"] == "female" and "name" not in resource and "birthDate" not in resource
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"} in resource["meta"]["tag"]


def test_token_system_with_quotes_is_bound_not_inlined(client: TestClient) -> None:
    odd = "urn:x:o'neil"
    created = post(client, patient(identifier=[{"system": odd, "value": "1"}]))
    assert ids(client, f"Patient?identifier={quote(odd)}|1") == [created["id"]]
    assert ids(client, "Patient?identifier=" + quote("x' OR '1'='1|1")) == []

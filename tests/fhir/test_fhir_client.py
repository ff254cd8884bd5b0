"""A FHIR client library from PyPI (fhirpy) creates, searches, pages and runs a transaction against the server."""

from fhirpy import SyncFHIRClient

from tests.builders import ID_CARD


def test_fhirpy_create_search_page_transaction(server_url: str) -> None:
    # fhirpy's count() adds Aidbox's _totalMethod parameter: lenient handling lets the server ignore it
    client = SyncFHIRClient(server_url, extra_headers={"Prefer": "handling=lenient"})
    created = client.resource("Patient", name=[{"family": "李", "given": ["娜"]}], gender="female", birthDate="1975-03-08",
                              identifier=[{"system": ID_CARD, "value": "110105197503080020"}])
    created.save()
    assert created.id and created["meta"]["versionId"] == "1"

    found = client.resources("Patient").search(identifier=f"{ID_CARD}|110105197503080020").fetch()
    assert [p.id for p in found] == [created.id]

    for i in range(25):
        client.resource("Observation", status="final", code={"text": "weight"}, subject=created.to_reference(),
                        valueQuantity={"value": 60 + i, "unit": "kg"}).save()
    everything = client.resources("Observation").search(patient=created.id).limit(10).fetch_all()
    assert len(everything) == 25
    assert client.resources("Observation").search(patient=created.id).count() == 25

    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:1b1f6f5e-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient", "name": [{"text": "王芳"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "height"},
                          "subject": {"reference": "urn:uuid:1b1f6f5e-0000-4000-8000-000000000001"}},
             "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    response = client.execute("", method="post", data=bundle)
    assert response["type"] == "transaction-response"
    assert [e["response"]["status"] for e in response["entry"]] == ["201 Created", "201 Created"]
    assert client.resources("Patient").search(name="王芳").count() == 1

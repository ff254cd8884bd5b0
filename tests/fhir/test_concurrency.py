"""Conditional create and update hold when 20 clients send the same request at once (a real server, real threads)."""

from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import httpx

from tests.builders import FHIR_JSON, ID_CARD, patient

CLIENTS = 20


def _at_once(send) -> list[httpx.Response]:
    barrier = Barrier(CLIENTS)

    def run(i: int) -> httpx.Response:
        with httpx.Client(timeout=60) as http:
            barrier.wait()
            return send(http, i)

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(run, range(CLIENTS)))


def test_conditional_create_makes_one_resource(server_url: str) -> None:
    query = f"identifier={ID_CARD}|11010519491231002X"
    body = patient(id_card="11010519491231002X")
    responses = _at_once(lambda http, _: http.post(f"{server_url}/Patient", json=body, headers={**FHIR_JSON, "If-None-Exist": query}))
    assert sorted(r.status_code for r in responses) == [200] * (CLIENTS - 1) + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert httpx.get(f"{server_url}/Patient?{query}&_total=accurate").json()["total"] == 1


def test_conditional_update_makes_one_resource(server_url: str) -> None:
    url = f"{server_url}/Patient?identifier={ID_CARD}|11010519491231002X"
    responses = _at_once(lambda http, i: http.put(url, json=patient(id_card="11010519491231002X", given=f"伟{i}"), headers=FHIR_JSON))
    assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses if r.status_code >= 300]
    assert [r.status_code for r in responses].count(201) == 1
    found = httpx.get(f"{url}&_total=accurate").json()
    assert found["total"] == 1
    assert found["entry"][0]["resource"]["meta"]["versionId"] == str(CLIENTS)


def test_concurrent_updates_of_one_resource_lose_nothing(server_url: str) -> None:
    httpx.put(f"{server_url}/Patient/shared", json={**patient(), "id": "shared"}, headers=FHIR_JSON).raise_for_status()
    responses = _at_once(lambda http, i: http.put(f"{server_url}/Patient/shared", json={**patient(given=str(i)), "id": "shared"}, headers=FHIR_JSON))
    assert all(r.status_code == 200 for r in responses)
    versions = sorted(int(r.json()["meta"]["versionId"]) for r in responses)
    assert versions == list(range(2, CLIENTS + 2))


def test_concurrent_patches_all_apply(server_url: str) -> None:
    httpx.put(f"{server_url}/Patient/patched", json={**patient(), "id": "patched", "telecom": []}, headers=FHIR_JSON).raise_for_status()
    headers = {"Content-Type": "application/json-patch+json"}
    responses = _at_once(
        lambda http, i: http.patch(f"{server_url}/Patient/patched", json=[{"op": "add", "path": "/telecom/-", "value": {"value": str(i)}}], headers=headers)
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    final = httpx.get(f"{server_url}/Patient/patched").json()
    assert sorted(int(t["value"]) for t in final["telecom"]) == list(range(CLIENTS))

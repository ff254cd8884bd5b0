"""`qiao mpi rebuild`: a district's Patients loaded with matching deferred, then placed at once as the online path
would have placed them; run again, it changes nothing, and what a steward decided stands."""

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app import cli
from app.config import get_settings
from app.mpi import linker
from app.mpi import rebuild as rebuilding
from app.mpi.model import Model
from tests.mpi.test_matching import CHC_MRN, HOSPITAL_MRN, id_number, master_of, pix, post, resident, target_ids

MPI = "urn:qiao:mpi"


def district(client: TestClient) -> dict[str, str]:
    """One resident in two institutions, twins, and a doubtful pair."""
    number, born = id_number("1956-03-08", 31), "1990-07-01"
    return {
        "hospital": post(client, resident("张", "伟", "1956-03-08", number=number, mrn=(HOSPITAL_MRN, "H001"))),
        "community": post(client, resident("章", "玮", "1956-03-08", number=number[:6] + number[8:17], mrn=(CHC_MRN, "C9"),
                                           phone="+86 139 1111 2222", address="劲松路3-2-502")),
        "twin1": post(client, resident("王", "建国", born, number=id_number(born, 11), mrn=(HOSPITAL_MRN, "T1"))),
        "twin2": post(client, resident("王", "建华", born, number=id_number(born, 13), mrn=(HOSPITAL_MRN, "T2"))),
        "li1": post(client, resident("李", "秀英", "1948-11-20", number=id_number("1948-11-20", 24), mrn=(HOSPITAL_MRN, "L1"), gender="female")),
        "li2": post(client, resident("李", "秀英", "1948-11-20", number=None, mrn=(CHC_MRN, "L2"), gender="female", phone="13800001111",
                                     address="北京市朝阳区学院路9号楼1单元101室")),
    }


def rebuild(capsys: pytest.CaptureFixture[str]) -> dict[str, int]:
    capsys.readouterr()
    assert cli.main(["mpi", "rebuild"]) == 0
    words = capsys.readouterr().out.split("(")[0].split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}


def test_an_initial_load_is_placed_by_the_rebuild_as_online(client: TestClient, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "mpi_online", False)
    ids = district(client)
    assert client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{HOSPITAL_MRN}|H001"}).status_code == 404  # waiting
    assert rebuild(capsys) == {"records": 6, "new": 6, "moved": 0, "masters": 5, "reviews": 1, "deferred": 0}
    master = master_of(client, f"{HOSPITAL_MRN}|H001")
    assert target_ids(pix(client, f"{CHC_MRN}|C9")) == {f"Patient/{master}", f"Patient/{ids['hospital']}", f"Patient/{ids['community']}"}
    assert master_of(client, f"{HOSPITAL_MRN}|T1") != master_of(client, f"{HOSPITAL_MRN}|T2")
    golden = client.get(f"/fhir/Patient/{master}").json()
    assert golden["birthDate"] == "1956-03-08" and {link["other"]["reference"] for link in golden["link"]} == {
        f"Patient/{ids['hospital']}", f"Patient/{ids['community']}"}
    queue = client.get("/mpi/reviews").json()["reviews"]
    assert [(r["patient"], r["master"]) for r in queue] == [(f"Patient/{ids['li2']}", f"Patient/{master_of(client, f'{HOSPITAL_MRN}|L1')}")]
    # run again: nothing moves, no review is queued twice, no master is rewritten
    assert rebuild(capsys) == {"records": 6, "new": 0, "moved": 0, "masters": 5, "reviews": 1, "deferred": 0}
    assert len(client.get("/mpi/reviews").json()["reviews"]) == 1
    assert client.get(f"/fhir/Patient/{master}").json()["meta"]["versionId"] == golden["meta"]["versionId"]


def test_a_rebuild_keeps_master_ids_and_what_a_steward_decided(client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    ids = district(client)
    before = {mrn: master_of(client, mrn) for mrn in (f"{HOSPITAL_MRN}|H001", f"{HOSPITAL_MRN}|T1", f"{HOSPITAL_MRN}|L1")}
    parted = client.post("/mpi/unmerge", json={"patient": [f"Patient/{ids['community']}"]})
    assert parted.status_code == 200, parted.text
    steward = master_of(client, f"{CHC_MRN}|C9")
    assert rebuild(capsys)["moved"] == 0
    assert {mrn: master_of(client, mrn) for mrn in before} == before
    assert master_of(client, f"{CHC_MRN}|C9") == steward  # the steward's unmerge stands


def test_a_model_trained_on_the_district_is_written_and_rebuilt_with(client: TestClient, capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    district(client)
    out = tmp_path / "model.yaml"
    assert cli.main(["mpi", "train", "--out", str(out), "--sample", "5"]) == 0
    assert str(out) in capsys.readouterr().out
    trained = Model.load(out)
    assert trained.trained_on["district_records"] == 6 and trained.trained_on["sampled"] == 5
    assert (trained.link, trained.review) == (linker.model().link, linker.model().review)  # thresholds are the operator's
    assert all(abs(sum(levels) - 1) < 1e-4 and min(levels) > 0 for levels in [*trained.m.values(), *trained.u.values()])

    monkeypatch.setattr(get_settings(), "mpi_model", out)
    linker.model.cache_clear()
    try:
        assert rebuild(capsys)["records"] == 6
    finally:
        linker.model.cache_clear()


def test_patients_written_during_a_rebuild_are_stored_at_once_and_placed_at_its_end(
        client: TestClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, app_engine: Engine) -> None:
    if app_engine.dialect.name != "postgresql":
        pytest.skip("SQLite writes one transaction at a time: nothing is written beside a rebuild")
    district(client)
    replaying, go_on = threading.Event(), threading.Event()
    replay = rebuilding._replay

    def paused(*args: Any) -> Any:
        replaying.set()
        assert go_on.wait(30)
        return replay(*args)

    monkeypatch.setattr(rebuilding, "_replay", paused)
    done: dict[str, rebuilding.Summary] = {}
    running = threading.Thread(target=lambda: done.update(summary=rebuilding.rebuild()))
    running.start()
    try:
        assert replaying.wait(30)  # the rebuild has read the records and is placing them
        post(client, resident("张", "伟", "1956-03-08", number=id_number("1956-03-08", 31), mrn=(HOSPITAL_MRN, "H002")))
        waiting = client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{HOSPITAL_MRN}|H002"})
        assert waiting.status_code == 404  # stored; its matching waits for the rebuild
        capsys.readouterr()
        assert cli.main(["mpi", "rebuild"]) == 2 and "already running" in capsys.readouterr().err
    finally:
        go_on.set()
        running.join(60)
    assert done["summary"].deferred == 1
    assert master_of(client, f"{HOSPITAL_MRN}|H002") == master_of(client, f"{HOSPITAL_MRN}|H001")
    assert rebuild(capsys)["deferred"] == 0


def test_online_matching_starts_from_the_rebuild_s_count_of_common_names(client: TestClient, capsys: pytest.CaptureFixture[str],
                                                                         monkeypatch: pytest.MonkeyPatch, app_engine: Engine) -> None:
    monkeypatch.setattr(get_settings(), "mpi_online", False)
    monkeypatch.setattr(linker, "COMMON", 2)  # a district of six records: a value twice is common
    district(client)
    rebuild(capsys)
    monkeypatch.setattr(linker, "_censuses", {})
    monkeypatch.setattr(linker, "_common", {})
    counted: list[str] = []
    value_counts = linker._value_counts

    def counting(connection: Any, keys: list[str]) -> Any:
        counted.extend(keys)
        return value_counts(connection, keys)

    monkeypatch.setattr(linker, "_value_counts", counting)
    query = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": resident(
        "李", "秀英", "1948-11-20", number=None, mrn=(CHC_MRN, "L3"), gender="female")}]}
    with app_engine.connect() as connection:
        kept = dict(connection.execute(text("SELECT key, records FROM mpi_common")).tuples().all())
    assert kept["tc:李秀英"] == 2 and all(count >= 2 for count in kept.values())
    assert client.post("/fhir/Patient/$match", json=query).status_code == 200
    assert "tc:李秀英" not in counted, counted  # the rebuild's count, not a new one


def test_a_fresh_process_starts_from_the_census_another_process_kept(client: TestClient, app_engine: Engine,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if app_engine.dialect.name != "postgresql":
        pytest.skip("SQLite's small index is counted at once; the kept census is PostgreSQL's")
    district(client)
    url = str(app_engine.url)
    linker._recount(app_engine, url)  # a process's count beside its writes, kept
    kept = linker._censuses[url][1]
    assert kept.residents >= 4 and kept.records == 6
    monkeypatch.setattr(linker, "_censuses", {})  # a fresh process
    counted_in_request: list[str] = []
    count = linker._count

    def counting(connection: Any) -> linker.Census:
        counted_in_request.append(threading.current_thread().name)
        return count(connection)

    monkeypatch.setattr(linker, "_count", counting)
    with app_engine.connect() as connection:
        census = linker._census(connection)
    assert (census.residents, census.records) == (kept.residents, kept.records)
    assert threading.current_thread().name not in counted_in_request  # counted beside it, not in the request
    monkeypatch.setattr(linker, "CENSUS_KEPT", 0.0)  # too old a census: counted in the request
    monkeypatch.setattr(linker, "_censuses", {})
    with app_engine.connect() as connection:
        linker._census(connection)
    assert threading.current_thread().name in counted_in_request


def test_a_server_started_after_a_rebuild_starts_from_its_count(client: TestClient, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch, app_engine: Engine) -> None:
    if app_engine.dialect.name != "postgresql":
        pytest.skip("SQLite's small index is counted at once; the kept census is PostgreSQL's")
    monkeypatch.setattr(get_settings(), "mpi_online", False)
    district(client)
    placed = rebuild(capsys)
    monkeypatch.setattr(linker, "_censuses", {})  # a fresh process
    counted: list[str] = []
    monkeypatch.setattr(linker, "_count", lambda connection: counted.append("counted") or linker.Census(0, 0))
    with app_engine.connect() as connection:
        census = linker._census(connection)
    assert (census.residents, census.records) == (placed["masters"], placed["records"])
    assert counted == []  # neither in the request nor beside it: the rebuild's count is a minute old at the earliest


def test_masters_rewritten_by_several_processes_are_those_one_writes(client: TestClient, capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch, app_engine: Engine) -> None:
    if app_engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer: its masters are rewritten in the rebuild's own process")
    monkeypatch.setattr(get_settings(), "mpi_online", False)
    ids = district(client)
    monkeypatch.setattr(rebuilding, "BATCH", 4)  # a master a chunk: five chunks for the processes
    pools: list[int] = []

    class Counted(rebuilding.ProcessPoolExecutor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pools.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(rebuilding, "ProcessPoolExecutor", Counted)
    assert rebuild(capsys) == {"records": 6, "new": 6, "moved": 0, "masters": 5, "reviews": 1, "deferred": 0}
    assert pools == [rebuilding.MASTER_PROCESSES]
    master = master_of(client, f"{HOSPITAL_MRN}|H001")
    golden = client.get(f"/fhir/Patient/{master}").json()
    assert golden["birthDate"] == "1956-03-08" and {link["other"]["reference"] for link in golden["link"]} == {
        f"Patient/{ids['hospital']}", f"Patient/{ids['community']}"}
    assert master_of(client, f"{HOSPITAL_MRN}|T1") != master_of(client, f"{HOSPITAL_MRN}|T2")

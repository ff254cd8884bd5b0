"""The quality indicators through $evaluate-measure, against numbers worked out by hand for a small region with the
national text's edge cases: a resident lost to follow-up, one of 65 and over, one who moved between centres, one
recorded at two institutions (one resident to the master patient index), follow-ups by phone; and the referral
loop's indicators from the referral workflow."""

from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from app import cli, db
from app.cdc.tables import indicator_followup, registry_span
from app.config import get_settings
from tests.builders import FHIR_JSON, patient
from tests.cdc.builders import condition, enrolment, followup, id_card
from tests.cdc.test_registries import GONGSHU, WEST_LAKE, centres, master_of, post  # noqa: F401 (fixture)
from tests.referrals.test_workflow import move, refer_up, tasks

Headers = dict[str, str]
YEAR = "periodStart=2025-01-01&periodEnd=2025-12-31"


def send(client: TestClient, bundle: dict[str, Any]) -> None:
    response = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert response.status_code == 200, response.text


def resident(client: TestClient, family: str, given: str, born: str, sequence: str, *, region: str = WEST_LAKE) -> str:
    return str(post(client, patient(family, given, id_card=id_card(region, born.replace("-", ""), sequence), birth_date=born))["id"])


@pytest.fixture
def region(client: TestClient, centres: None) -> dict[str, str]:  # noqa: F811 (the fixture imported above)
    """Five residents managed for hypertension in 2025 and two for diabetes, and two who are not (managed only after,
    or only before); by name, their master ids."""
    people: dict[str, str] = {}

    a = resident(client, "张", "建华", "1970-04-02", "011")  # 55: controlled at the last follow-up; four face to face
    post(client, condition(a))
    post(client, enrolment(a, "chc-1", "2024-03-01"))
    for day, mode, bp in (("2025-03-10", "AMB", (138, 86)), ("2025-06-10", "AMB", (142, 88)), ("2025-09-10", "HH", (136, 84)),
                          ("2025-12-10", "AMB", (135, 85))):
        send(client, followup(a, day, mode=mode, bp=bp))

    b = resident(client, "李", "桂兰", "1950-01-15", "022")  # 75: 145/85 is controlled only in the 65-and-over band
    post(client, condition(b))
    post(client, enrolment(b, "chc-1", "2023-01-01"))
    for day, mode, bp in (("2025-03-05", "AMB", (150, 92)), ("2025-06-05", "AMB", (148, 88)), ("2025-09-05", "AMB", (146, 86)),
                          ("2025-12-05", "VR", (145, 85))):  # the last by phone: three face to face
        send(client, followup(b, day, mode=mode, bp=bp))

    c = resident(client, "王", "志强", "1965-07-07", "031")  # lost to follow-up in 2025 (seen in 2024 only)
    post(client, condition(c))
    post(client, enrolment(c, "chc-1", "2024-05-01"))
    send(client, followup(c, "2024-11-01", bp=(130, 80)))

    d_west = resident(client, "赵", "国庆", "1960-02-02", "041")  # moved from chc-1 to chc-2 on 1 July
    d_gongshu = resident(client, "赵", "国庆", "1960-02-02", "041")
    post(client, condition(d_west))
    post(client, enrolment(d_west, "chc-1", "2024-01-01", end="2025-06-30T23:59:59+08:00", status="finished"))
    post(client, enrolment(d_gongshu, "chc-2", "2025-07-01"))
    for who, day, mode, bp in ((d_west, "2025-03-01", "VR", (132, 82)), (d_west, "2025-05-20", "AMB", (134, 80)),
                               (d_gongshu, "2025-08-01", "AMB", (138, 88)), (d_gongshu, "2025-10-01", "AMB", (141, 89)),
                               (d_gongshu, "2025-11-15", "HH", (150, 95))):
        send(client, followup(who, day, mode=mode, bp=bp))

    e_hospital = resident(client, "钱", "淑珍", "1958-09-09", "052", region=GONGSHU)  # one resident, two records
    e_centre = resident(client, "钱", "淑珍", "1958-09-09", "052", region=GONGSHU)
    post(client, condition(e_hospital, "I11.9"))
    post(client, enrolment(e_centre, "chc-2", "2024-06-01"))
    for who, day, mode, bp in ((e_centre, "2025-02-10", "AMB", (130, 80)), (e_centre, "2025-05-10", "AMB", (132, 82)),
                               (e_hospital, "2025-08-10", "AMB", (126, 76)), (e_hospital, "2025-11-10", "AMB", (128, 78)),
                               (e_hospital, "2025-12-20", "VR", None)):  # the latest, by phone, took no reading
        send(client, followup(who, day, mode=mode, bp=bp))

    f = resident(client, "孙", "丽", "1975-05-05", "062")  # managed from 2026
    post(client, condition(f))
    post(client, enrolment(f, "chc-1", "2026-01-01"))
    g = resident(client, "周", "明", "1955-03-03", "071")  # management ended in 2024
    post(client, condition(g))
    post(client, enrolment(g, "chc-1", "2023-01-01", end="2024-12-31T23:59:59+08:00", status="finished"))

    t1 = resident(client, "吴", "海燕", "1972-08-08", "082")
    post(client, condition(t1, "E11.9"))
    post(client, enrolment(t1, "chc-1", "2024-01-01", "t2dm"))
    send(client, followup(t1, "2025-06-01", "t2dm", glucose=(6.5, "mmol/L")))
    t2 = resident(client, "郑", "伟", "1968-10-10", "091", region=GONGSHU)
    post(client, condition(t2, "E11"))
    post(client, enrolment(t2, "chc-2", "2024-01-01", "t2dm"))
    send(client, followup(t2, "2025-09-01", "t2dm", glucose=(140, "mg/dL")))  # 7.8 mmol/L

    for name, record in (("a", a), ("b", b), ("c", c), ("d", d_west), ("e", e_hospital), ("f", f), ("g", g), ("t1", t1), ("t2", t2)):
        people[name] = master_of(client, record)
    assert master_of(client, d_gongshu) == people["d"] and master_of(client, e_centre) == people["e"]
    return people


def evaluate(client: TestClient, measure: str, query: str = YEAR, headers: Headers | None = None) -> dict[str, Any]:
    response = client.get(f"/fhir/Measure/{measure}/$evaluate-measure?{query}", headers=headers or {})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["resourceType"] == "MeasureReport" and report["status"] == "complete"
    return dict(report)


def counts(report: dict[str, Any]) -> tuple[int, int, int, float | None]:
    """(denominator, numerator, exclusions, score)."""
    group = report["group"][0]
    found = {p["code"]["coding"][0]["code"]: p["count"] for p in group["population"]}
    return found["denominator"], found["numerator"], found["denominator-exclusion"], group.get("measureScore", {}).get("value")


def strata(report: dict[str, Any], stratifier: str) -> dict[str, tuple[int, int]]:
    """Stratum → (denominator, numerator)."""
    found = next(s for s in report["group"][0]["stratifier"] if s["code"][0]["coding"][0]["code"] == stratifier)
    result = {}
    for stratum in found["stratum"]:
        populations = {p["code"]["coding"][0]["code"]: p["count"] for p in stratum["population"]}
        key = stratum["value"].get("text") or stratum["value"]["coding"][0]["code"]
        result[key] = (populations["denominator"], populations["numerator"])
    return result


def test_the_control_rates_are_the_hand_computed_ones(client: TestClient, region: dict[str, str]) -> None:
    report = evaluate(client, "htn-control-rate")
    assert report["type"] == "summary" and report["period"] == {"start": "2025-01-01", "end": "2025-12-31"}
    assert report["measure"] == "http://testserver/fhir/Measure/htn-control-rate"
    assert counts(report) == (5, 3, 0, 0.6)  # a, b (65 and over), e (two records, one resident); not c (lost), d (150/95)
    assert strata(report, "organization") == {"Organization/chc-1": (3, 2), "Organization/chc-2": (2, 1)}
    assert strata(report, "district") == {WEST_LAKE: (3, 2), GONGSHU: (2, 1)}
    assert counts(evaluate(client, "t2dm-control-rate")) == (2, 1, 0, 0.5)  # 6.5 mmol/L; 140 mg/dL is 7.8


def test_a_resident_who_moved_counts_where_managed_last_in_the_period(client: TestClient, region: dict[str, str]) -> None:
    first_half = evaluate(client, "htn-control-rate", "periodStart=2025-01-01&periodEnd=2025-06-30")
    # a: 142/88 in June; b: 148/88 at 75; c: lost; d: 134/80 at chc-1, before the move; e: 132/82
    assert counts(first_half) == (5, 3, 0, 0.6)
    assert strata(first_half, "organization") == {"Organization/chc-1": (4, 2), "Organization/chc-2": (1, 1)}


def test_the_open_points_of_the_national_text_are_switches(client: TestClient, region: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = get_settings()
    monkeypatch.setattr(settings, "indicator_elderly_bp", False)
    assert counts(evaluate(client, "htn-control-rate")) == (5, 2, 0, 0.4)  # b's 145/85 is over 140
    monkeypatch.setattr(settings, "indicator_elderly_bp", True)
    monkeypatch.setattr(settings, "indicator_lost_is_uncontrolled", False)
    assert counts(evaluate(client, "htn-control-rate")) == (4, 3, 1, 0.75)  # c left out
    monkeypatch.setattr(settings, "indicator_lost_is_uncontrolled", True)
    monkeypatch.setattr(settings, "indicator_latest", "any")
    assert counts(evaluate(client, "htn-control-rate")) == (5, 2, 0, 0.4)  # e's last follow-up took no reading


def test_standardised_management_counts_face_to_face_follow_ups_pro_rata(client: TestClient, region: dict[str, str],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # four face to face in the year: a, d (one at each centre: the phone call does not count), e (two per record)
    assert counts(evaluate(client, "htn-standardized-management-rate")) == (5, 3, 0, 0.6)
    # a quarter asks for one: b's only one in Q4 was by phone
    assert counts(evaluate(client, "htn-standardized-management-rate", "periodStart=2025-10-01&periodEnd=2025-12-31")) == (5, 3, 0, 0.6)
    monkeypatch.setattr(get_settings(), "indicator_face_to_face_per_year", 3)
    assert counts(evaluate(client, "htn-standardized-management-rate")) == (5, 4, 0, 0.8)
    assert counts(evaluate(client, "t2dm-standardized-management-rate")) == (2, 0, 0, 0.0)


def test_a_subject_list_names_each_resident_once(client: TestClient, region: dict[str, str]) -> None:
    report = evaluate(client, "htn-control-rate", YEAR + "&reportType=subject-list")
    assert report["type"] == "subject-list"
    lists = {c["id"]: [e["item"]["reference"] for e in c.get("entry", [])] for c in report["contained"]}
    assert lists["numerator"] == sorted(f"Patient/{region[n]}" for n in "abe")
    assert lists["denominator"] == sorted(f"Patient/{region[n]}" for n in "abcde")
    numerator = next(p for p in report["group"][0]["population"] if p["code"]["coding"][0]["code"] == "numerator")
    assert numerator["subjectResults"] == {"reference": "#numerator"}


def test_a_report_narrowed_to_an_organization_or_a_district(client: TestClient, region: dict[str, str]) -> None:
    by_centre = evaluate(client, "htn-control-rate", YEAR + "&subject=Organization/chc-2")
    assert counts(by_centre) == (2, 1, 0, 0.5) and by_centre["reporter"] == {"reference": "Organization/chc-2"}
    assert counts(evaluate(client, "htn-control-rate", YEAR + f"&district={WEST_LAKE}")) == (3, 2, 0, 0.6667)
    assert counts(evaluate(client, "htn-control-rate", YEAR + "&district=110101")) == (0, 0, 0, None)


def test_bad_requests_are_answered_with_an_outcome(client: TestClient) -> None:
    for query, status, where in (("periodEnd=2025-12-31", 400, "periodStart"), (YEAR + "&subject=Patient/x", 400, "subject"),
                                 ("periodStart=2025-12-31&periodEnd=2025-01-01", 400, "periodEnd"),
                                 ("periodStart=2025-13-01&periodEnd=2025-12-31", 400, "periodStart"),
                                 (YEAR + "&reportType=subject", 400, "reportType"), (YEAR + "&district=33", 400, "district")):
        response = client.get(f"/fhir/Measure/htn-control-rate/$evaluate-measure?{query}")
        assert response.status_code == status, query
        assert response.json()["resourceType"] == "OperationOutcome" and where in response.json()["issue"][0]["expression"], query
    assert client.get(f"/fhir/Measure/no-such-rate/$evaluate-measure?{YEAR}").status_code == 404
    refused = client.post("/fhir/Measure", json={"resourceType": "Measure", "status": "active"}, headers=FHIR_JSON)
    assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"


def test_the_measures_are_published(client: TestClient) -> None:
    listed = client.get("/fhir/Measure").json()
    assert {e["resource"]["id"] for e in listed["entry"]} == {
        "htn-control-rate", "t2dm-control-rate", "htn-standardized-management-rate", "t2dm-standardized-management-rate",
        "followup-completion-rate", "referral-closed-loop-rate", "referral-time-to-accept", "referral-time-to-complete",
        "referral-escalation-resolution-rate"}
    measure = client.get("/fhir/Measure/t2dm-control-rate").json()
    assert measure["scoring"]["coding"][0]["code"] == "proportion" and "空腹血糖" in measure["description"]
    timed = client.get("/fhir/Measure/referral-time-to-accept").json()
    assert timed["scoring"]["coding"][0]["code"] == "continuous-variable" and timed["extension"][0]["valueCode"] == "median"
    assert timed["improvementNotation"]["coding"][0]["code"] == "decrease"
    statement = client.get("/fhir/metadata").json()
    declared = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Measure")
    assert declared["operation"][0]["name"] == "evaluate-measure"


def test_an_institution_counts_only_the_residents_it_may_see(client: TestClient, region: dict[str, str],
                                                             institutions: dict[str, Headers]) -> None:
    assert counts(evaluate(client, "htn-control-rate", headers=institutions["cdc"])) == (5, 3, 0, 0.6)
    # chc-1 manages a, b and c today (d moved away): it is caring for them, and sees no one else
    centre = evaluate(client, "htn-control-rate", YEAR + "&reportType=subject-list", headers=institutions["chc"])
    assert counts(centre) == (3, 2, 0, 0.6667)
    assert [e["item"]["reference"] for e in centre["contained"][1]["entry"]] == sorted(f"Patient/{region[n]}" for n in "abc")
    assert counts(evaluate(client, "htn-control-rate", headers=institutions["hospital"])) == (0, 0, 0, None)


def test_the_referral_loop_indicators(client: TestClient, institutions: dict[str, Headers]) -> None:
    chc, hospital = institutions["chc"], institutions["hospital"]
    closed = refer_up(client, chc, str(post(client, patient("李", "秀英", id_card="440524188001010014"), chc)["id"]))
    refer_up(client, chc, str(post(client, patient("张", "伟", id_card="11010519491231002X"), chc)["id"]))  # sent, still open
    for stage in ("accepted", "in-progress"):
        closed = move(client, hospital, closed, stage).json()
    outcome = post(client, {"resourceType": "DocumentReference", "status": "current", "subject": closed["for"],
                            "content": [{"attachment": {"contentType": "text/plain", "data": "5Ye66Zmi"}}]}, hospital)
    assert move(client, hospital, closed, "completed", output=[{"type": {"text": "出院小结"},
                                                               "valueReference": {"reference": f"DocumentReference/{outcome['id']}"}}]).status_code == 200
    two_weeks = next(t for t in tasks(client, chc, "code=urn:qiao:task-code|referral-follow-up&status=requested")
                     if t["partOf"] == [{"reference": f"Task/{closed['id']}"}])
    assert move(client, chc, two_weeks, "completed").status_code == 200

    today = datetime.now(get_settings().zone).date()
    period = f"periodStart={today - timedelta(days=1)}&periodEnd={today + timedelta(days=1)}"
    assert counts(evaluate(client, "referral-closed-loop-rate", period, institutions["cdc"])) == (2, 1, 0, 0.5)
    # the down-referral's follow-up and the open referral's are not yet due: not countable; the one done is on time
    assert counts(evaluate(client, "followup-completion-rate", period, institutions["cdc"])) == (1, 1, 2, 1.0)
    last_year = f"periodStart={today.year - 1}-01-01&periodEnd={today.year - 1}-12-31"
    assert counts(evaluate(client, "referral-closed-loop-rate", last_year, institutions["cdc"])) == (0, 0, 0, None)


def only(client: TestClient, query: str) -> dict[str, Any]:
    found = client.get(f"/fhir/{query}").json().get("entry") or []
    assert len(found) == 1, query
    return dict(found[0]["resource"])


def test_a_follow_up_is_counted_as_its_records_change(client: TestClient, region: dict[str, str]) -> None:
    """The indicators' follow-up table follows every write of a reading or its Encounter."""
    latest = only(client, "Observation?code=http://loinc.org|85354-9&date=2025-12-10")  # a's 135/85
    raised = latest | {"component": [c | {"valueQuantity": c["valueQuantity"] | {"value": v}} for c, v in zip(latest["component"], (160, 95), strict=True)]}
    assert client.put(f"/fhir/Observation/{latest['id']}", json=raised, headers=FHIR_JSON).status_code == 200
    assert counts(evaluate(client, "htn-control-rate")) == (5, 2, 0, 0.4)
    # moved to September's follow-up, it decides there (the latest with a reading): 160/95 is not controlled
    september = only(client, "Encounter?date=2025-09-10")
    moved = raised | {"encounter": {"reference": f"Encounter/{september['id']}"}}
    assert client.put(f"/fhir/Observation/{latest['id']}", json=moved, headers=FHIR_JSON).status_code == 200
    assert counts(evaluate(client, "htn-control-rate")) == (5, 2, 0, 0.4)
    assert client.delete(f"/fhir/Observation/{latest['id']}").status_code in (200, 204)
    # September's own 136/84 decides now (December's follow-up has no reading left)
    assert counts(evaluate(client, "htn-control-rate")) == (5, 3, 0, 0.6)
    assert client.put(f"/fhir/Encounter/{september['id']}", json=september | {"status": "entered-in-error"}, headers=FHIR_JSON).status_code == 200
    assert counts(evaluate(client, "htn-control-rate")) == (5, 2, 0, 0.4)  # June's 142/88
    # three face-to-face follow-ups are left to a (March, June, December): no longer managed per the standard
    assert counts(evaluate(client, "htn-standardized-management-rate")) == (5, 2, 0, 0.4)


def test_a_rebuild_writes_the_indicator_tables_as_the_writes_kept_them(client: TestClient, region: dict[str, str],
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    def tables() -> tuple[list[Any], list[Any]]:
        with db.transaction() as session:
            return (sorted(tuple(r) for r in session.execute(select(registry_span))),
                    sorted(tuple(r) for r in session.execute(select(indicator_followup))))

    kept = tables()
    assert len(kept[0]) == 10 and len(kept[1]) == 21  # spans: d has two; follow-ups: 4 + 4 + 1 + 5 + 5 + 1 + 1
    with db.transaction() as session:
        session.execute(delete(registry_span))
        session.execute(delete(indicator_followup))
    assert counts(evaluate(client, "htn-control-rate")) == (0, 0, 0, None)
    assert cli.main(["registries", "rebuild"]) == 0
    assert capsys.readouterr().out.split()[-2:] == ["followups", "21"]
    assert tables() == kept
    assert counts(evaluate(client, "htn-control-rate")) == (5, 3, 0, 0.6)

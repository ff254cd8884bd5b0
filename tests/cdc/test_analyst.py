"""The CDC analyst's view: a year's indicators as a table, control rates per centre by quarter as a chart; over HTTP
and `qiao indicators`, checked against the hand-computed region of test_indicators."""

import csv
import io
from pathlib import Path
from xml.etree import ElementTree

import pytest
from fastapi.testclient import TestClient

from app import cli, db
from app.auth.principal import SYSTEM
from app.cdc import analyst, indicators
from tests.cdc.test_indicators import Headers, region  # noqa: F401 (the fixture, redefined as a parameter below)
from tests.cdc.test_registries import GONGSHU, WEST_LAKE, centres  # noqa: F401 (fixture)


def rows(text: str) -> dict[tuple[str, str], tuple[int, int, str]]:
    """(indicator, organization or * for the total) → (numerator, denominator, rate %)."""
    assert text.startswith("\ufeff")
    found = {}
    for row in csv.DictReader(io.StringIO(text.removeprefix("\ufeff"))):
        found[(row["indicator"], row["organization"])] = (int(row["numerator"]), int(row["denominator"]), row["rate_percent"])
    return found


def test_a_years_indicators_as_a_table_per_district_and_centre(client: TestClient, region: dict[str, str]) -> None:  # noqa: F811
    response = client.get("/cdc/indicators?year=2025")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    table = rows(response.text)
    assert table[("htn-control-rate", "*")] == (3, 5, "60.0")
    assert table[("htn-control-rate", "chc-1")] == (2, 3, "66.7") and table[("htn-control-rate", "chc-2")] == (1, 2, "50.0")
    assert table[("t2dm-control-rate", "*")] == (1, 2, "50.0")
    assert table[("htn-standardized-management-rate", "*")] == (3, 5, "60.0")
    assert table[("referral-closed-loop-rate", "*")] == (0, 0, "")  # no referrals: no rate, not 0 %
    assert "西湖区社区卫生服务中心" in response.text
    west_lake = rows(client.get(f"/cdc/indicators?year=2025&district={WEST_LAKE}").text)
    assert west_lake[("htn-control-rate", "*")] == (2, 3, "66.7") and ("htn-control-rate", "chc-2") not in west_lake


def test_control_rates_per_centre_by_quarter(client: TestClient, region: dict[str, str]) -> None:  # noqa: F811
    with db.transaction() as session:
        series = analyst.control_rates(session, SYSTEM, 2025, None, "hypertension", indicators.Rules.configured())
        gongshu = analyst.control_rates(session, SYSTEM, 2025, GONGSHU, "hypertension", indicators.Rules.configured())
    # Q1 a 138/86 ✓, b 150/92 at 75 ✗, c lost, d 132/82 ✓ (at chc-1 until July), e 130/80 ✓; Q4 d's 150/95 ✗ at chc-2
    assert series == {None: [60.0, 60.0, 80.0, 60.0], "chc-1": [50.0, 50.0, 66.7, 66.7], "chc-2": [100.0, 100.0, 100.0, 50.0]}
    assert gongshu == {None: [100.0, 100.0, 100.0, 50.0], "chc-2": [100.0, 100.0, 100.0, 50.0]}

    response = client.get("/cdc/control-rates?year=2025&programme=hypertension")
    assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml"
    svg = ElementTree.fromstring(response.content)
    texts = " ".join("".join(t.itertext()) for t in svg.iter("{http://www.w3.org/2000/svg}text"))
    for label in ("Q1", "Q4", "拱墅区社区卫生服务中心", "西湖区社区卫生服务中心", "district (all centres)"):
        assert label in texts  # kept as text, so a viewer draws the Chinese names


def test_bad_requests_and_access(client: TestClient, region: dict[str, str], institutions: dict[str, Headers]) -> None:  # noqa: F811
    for query, where in (("", "year"), ("?year=2025&district=33", "district"), ("?year=20250", "year")):
        response = client.get(f"/cdc/indicators{query}")
        assert response.status_code == 400 and response.json()["resourceType"] == "OperationOutcome", query
        assert where in response.text
    response = client.get("/cdc/control-rates?year=2025&programme=copd")
    assert response.status_code == 400 and "programme" in response.json()["issue"][0]["expression"]
    assert client.get("/cdc/indicators?year=2025", headers={"Authorization": ""}).status_code == 401
    assert client.get("/cdc/indicators?year=2025", headers=institutions["auditor"]).status_code == 403
    centre = rows(client.get("/cdc/indicators?year=2025", headers=institutions["chc"]).text)
    assert centre[("htn-control-rate", "*")] == (2, 3, "66.7")  # the residents chc-1 cares for, as in $evaluate-measure


def test_qiao_indicators_prints_the_table_and_writes_the_chart(region: dict[str, str], tmp_path: Path,  # noqa: F811
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    chart = tmp_path / "control.svg"
    assert cli.main(["indicators", "--year", "2025", "--chart", str(chart)]) == 0
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if line.startswith("htn-control-rate") and "all districts" in line)
    assert total.split()[-4:] == ["3", "/", "5", "60.0%"]
    assert chart.read_bytes().startswith(b"<?xml")
    assert cli.main(["indicators", "--year", "2025", "--csv", "--district", GONGSHU]) == 0
    assert rows(capsys.readouterr().out)[("htn-control-rate", "*")] == (1, 2, "50.0")
    assert cli.main(["indicators", "--year", "2025", "--district", "x"]) == 2

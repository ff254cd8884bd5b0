"""The CDC analyst's view: a year's indicators for a district as a table (the district's figure, then each centre's),
and a chart of control rates per community centre by quarter. Both come from the same evaluation as
`$evaluate-measure`, so a number in the table is the number in the MeasureReport.
"""

import csv
import io
import math
import warnings
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.auth.principal import Principal
from app.cdc import indicators, registries
from app.cdc.cases import DENOMINATOR, MEASURED, NUMERATOR, Case, median_value
from app.cdc.indicators import Indicator, Rules
from app.cdc.population import Period
from app.errors import InvalidRequest

QUARTERS = (("Q1", "01-01", "03-31"), ("Q2", "04-01", "06-30"), ("Q3", "07-01", "09-30"), ("Q4", "10-01", "12-31"))
CONTROL = {"hypertension": "htn-control-rate", "t2dm": "t2dm-control-rate"}



@dataclass(frozen=True)
class Row:
    indicator: Indicator
    organization: str | None  # None: unknown, or the total
    name: str
    numerator: int  # a time measure's: the referrals that got there
    denominator: int  # a time measure's: the referrals sent
    median_hours: float | None  # a time measure's score
    total: bool = False  # the district's (or the region's) figure

    @property
    def rate(self) -> float | None:
        if self.indicator.scoring != "proportion":
            return None
        return self.numerator / self.denominator if self.denominator else None


def year_period(year: int) -> Period:
    if not 1900 <= year <= 2999:
        raise InvalidRequest(f"year {year} is not a calendar year", expression=["year"])
    return indicators.period(f"{year}-01-01", f"{year}-12-31")


def table(session: Session, principal: Principal, year: int, district: str | None, rules: Rules) -> list[Row]:
    """Every indicator for the year: the district's figure first, then one row per organization counted in it."""
    period = year_period(year)
    district = indicators.district(district)
    counted = []
    for indicator in indicators.INDICATORS.values():
        cases = indicators.within(indicators.evaluate(session, indicator, period, principal, rules), None, district)
        counted.append((indicator, cases, _by_organization(cases)))
    names = _names(session, {org for _, _, groups in counted for org in groups})
    rows = []
    for indicator, cases, groups in counted:
        rows.append(Row(indicator, None, f"district {district}" if district else "all districts", *_counts(indicator, cases), total=True))
        rows += [Row(indicator, org or None, names.get(org, org or "unknown"), *_counts(indicator, items)) for org, items in sorted(groups.items())]
    return rows


def _by_organization(cases: list[Case]) -> dict[str, list[Case]]:
    """The cases by the organization they count under ("" for none known)."""
    groups: dict[str, list[Case]] = {}
    for item in cases:
        groups.setdefault(item.organization or "", []).append(item)
    return groups


def _counts(indicator: Indicator, cases: list[Case]) -> tuple[int, int, float | None]:
    """(numerator, denominator, median hours)."""
    if indicator.scoring == "proportion":
        return sum(NUMERATOR in c.populations for c in cases), sum(DENOMINATOR in c.populations for c in cases), None
    observed = sum(c.value is not None for c in cases)
    return observed, sum(MEASURED in c.populations for c in cases), median_value(cases)


def _names(session: Session, org_ids: set[str]) -> dict[str, str]:
    found = registries.read_organizations(session, {o for o in org_ids if o})
    return {org_id: str(content.get("name") or org_id) for org_id, content in found.items()}


def as_csv(rows: list[Row]) -> str:
    """The table as CSV (UTF-8 with a byte-order mark, so that a spreadsheet opens the Chinese titles as such)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["indicator", "title", "organization", "name", "numerator", "denominator", "rate_percent", "median_hours"])
    for row in rows:
        writer.writerow([row.indicator.id, row.indicator.title, "*" if row.total else row.organization or "", row.name, row.numerator,
                         row.denominator, "" if row.rate is None else f"{100 * row.rate:.1f}",
                         "" if row.median_hours is None else f"{row.median_hours:g}"])
    return "\ufeff" + out.getvalue()


def as_text(rows: list[Row]) -> str:
    """The table for a terminal: one line per indicator and organization."""
    lines = []
    for row in rows:
        rate = "-" if row.rate is None else f"{100 * row.rate:5.1f}%"
        if row.median_hours is not None:
            rate = f"{row.median_hours:g} h"
        indent = "" if row.total else "  "
        lines.append(f"{row.indicator.id:34} {indent}{row.name:24} {row.numerator:>7,} / {row.denominator:<7,} {rate:>7}")
    return "\n".join(lines) + "\n"


def control_rates(session: Session, principal: Principal, year: int, district: str | None, programme: str,
                  rules: Rules) -> dict[str | None, list[float | None]]:
    """The control rate (%) by quarter of the district (key None) and of each centre counted in it."""
    if programme not in CONTROL:
        raise InvalidRequest(f"programme {programme!r} is not known; use {' or '.join(CONTROL)}", expression=["programme"])
    year_period(year)
    district = indicators.district(district)
    indicator = indicators.INDICATORS[CONTROL[programme]]
    series: dict[str | None, list[float | None]] = {}
    for number, (_, first, last) in enumerate(QUARTERS):
        quarter = indicators.period(f"{year}-{first}", f"{year}-{last}")
        cases = indicators.within(indicators.evaluate(session, indicator, quarter, principal, rules), None, district)
        groups: list[tuple[str | None, list[Case]]] = [(None, cases), *_by_organization(cases).items()]
        for key, items in groups:
            numerator, denominator, _ = _counts(indicator, items)
            series.setdefault(key, [None] * len(QUARTERS))[number] = round(100 * numerator / denominator, 1) if denominator else None
    return series


def control_chart(session: Session, principal: Principal, year: int, district: str | None, programme: str, rules: Rules) -> bytes:
    """An SVG line chart of the control rate per centre by quarter, the district's as a dashed line. The text stays
    text (svg.fonttype none), so the viewer draws the centres' Chinese names with its own fonts."""
    series = control_rates(session, principal, year, district, programme, rules)
    names = _names(session, {k for k in series if k})
    title = f"{indicators.INDICATORS[CONTROL[programme]].title}, {year}" + (f", district {district}" if district else "")
    return _draw(title, series, names)


def _draw(title: str, series: dict[str | None, list[float | None]], names: dict[str, str]) -> bytes:
    import matplotlib  # imported when a chart is drawn: it costs a second at start-up

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    out = io.BytesIO()
    # text kept as text, in the first of these fonts the viewer has; ids stable from one drawing to the next
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "qiao", "font.sans-serif": [
            "Noto Sans CJK SC", "Source Han Sans SC", "Microsoft YaHei", "PingFang SC", "DejaVu Sans"]}):
        figure = Figure(figsize=(9, 5), layout="constrained")
        axes = figure.subplots()
        labels = [label for label, _, _ in QUARTERS]
        for key, rates in sorted(series.items(), key=lambda item: (item[0] is None, item[0] or "")):
            values = [math.nan if rate is None else rate for rate in rates]  # a quarter without residents: a gap
            if key is None:
                axes.plot(labels, values, linestyle="--", color="black", linewidth=2, label="district (all centres)")
            else:
                axes.plot(labels, values, marker="o", label=names.get(key, key or "unknown"))
        axes.set_ylim(0, 105)  # a centre at 100 % stays visible
        axes.set_yticks(range(0, 101, 20))
        axes.set_ylabel("control rate, %")
        axes.set_title(title)
        axes.grid(axis="y", alpha=0.3)
        axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
        with warnings.catch_warnings():  # the server has no CJK font to measure with: the viewer has one
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
            figure.savefig(out, format="svg")
    return out.getvalue()

"""Measures and the MeasureReports their evaluation gives (FHIR R4 Measure, Da Vinci DEQM report shapes).

A summary report counts each population and scores numerator / denominator (a proportion, 0..1), overall and
stratified by managing organization and by GB/T 2260 district. A subject-list report adds, for each population, a
List of its subjects (contained, as HAPI's and cqf-ruler's do; DEQM would have a List of individual MeasureReports,
which says nothing more here), so that an analyst can check a number against the residents behind it.
"""

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from app.cdc.cases import DENOMINATOR, NUMERATOR, POPULATIONS, Case
from app.cdc.indicators import Indicator
from app.store import dates

POPULATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-population"
SCORING = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/measure-scoring", "code": "proportion"}]}
INCREASE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/measure-improvement-notation", "code": "increase"}]}
STRATIFIER_SYSTEM = "urn:qiao:measure-stratifier"
STRATIFIERS = {"organization": "管理机构 (managing organization)", "district": "行政区划 GB/T 2260 (district)"}
DISTRICT_SYSTEM = "urn:qiao:gb-t-2260"
UNKNOWN = "unknown"


def measure(indicator: Indicator, base: str) -> dict[str, Any]:
    """The Measure: what is counted, in words, and how the report is stratified."""
    populations = {"initial-population": indicator.denominator, "denominator": indicator.denominator,
                   "denominator-exclusion": "分母中无法判定者（见 README：失访 等设置）", "numerator": indicator.numerator}
    return {
        "resourceType": "Measure", "id": indicator.id, "url": f"{base}/Measure/{indicator.id}",
        "identifier": [{"system": "urn:qiao:measure", "value": indicator.id}],
        "name": indicator.id.replace("-", "_"), "title": indicator.title, "status": "active", "experimental": False,
        "publisher": "Qiao", "description": f"{indicator.numerator} / {indicator.denominator} × 100%",
        "scoring": SCORING, "improvementNotation": INCREASE,
        "group": [{
            "population": [{"code": _population_code(code), "description": text,
                            "criteria": {"language": "text/plain", "expression": text}} for code, text in populations.items()],
            "stratifier": [{"code": _stratifier_code(code), "description": text} for code, text in STRATIFIERS.items()],
        }],
    }


def report(indicator: Indicator, cases: Sequence[Case], *, base: str, period: dict[str, str], subject_list: bool,
           reporter: str | None, generated: datetime) -> dict[str, Any]:
    populations = [_population(code, cases, subject_list) for code in POPULATIONS]
    group: dict[str, Any] = {"population": populations}
    score = _score(cases)
    if score is not None:
        group["measureScore"] = {"value": score}
    group["stratifier"] = [_stratifier(name, cases) for name in STRATIFIERS]
    content: dict[str, Any] = {"resourceType": "MeasureReport"}
    if subject_list:
        content["contained"] = [_list(code, cases) for code in POPULATIONS]
    content |= {
        "status": "complete", "type": "subject-list" if subject_list else "summary",
        "measure": f"{base}/Measure/{indicator.id}", "date": dates.instant(generated), "period": period,
        "improvementNotation": INCREASE, "group": [group],
    }
    if reporter:
        content["reporter"] = {"reference": f"Organization/{reporter}"}
    return content


def _population(code: str, cases: Iterable[Case], subject_list: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"code": _population_code(code), "count": sum(code in c.populations for c in cases)}
    if subject_list:
        item["subjectResults"] = {"reference": f"#{code}"}
    return item


def _list(code: str, cases: Iterable[Case]) -> dict[str, Any]:
    subjects = sorted(c.subject for c in cases if code in c.populations)
    content: dict[str, Any] = {"resourceType": "List", "id": code, "status": "current", "mode": "snapshot",
                               "title": code, "code": _population_code(code)}
    if subjects:
        content["entry"] = [{"item": {"reference": subject}} for subject in subjects]
    return content


def _score(cases: Iterable[Case]) -> float | None:
    counts = Counter(code for c in cases for code in c.populations)
    return round(counts[NUMERATOR] / counts[DENOMINATOR], 4) if counts[DENOMINATOR] else None


def _stratifier(name: str, cases: Iterable[Case]) -> dict[str, Any]:
    strata: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        strata[getattr(case, name) or UNKNOWN].append(case)
    items = []
    for value in sorted(strata):
        stratum: dict[str, Any] = {"value": _stratum_value(name, value),
                                   "population": [_population(code, strata[value], False) for code in POPULATIONS]}
        score = _score(strata[value])
        if score is not None:
            stratum["measureScore"] = {"value": score}
        items.append(stratum)
    return {"code": [_stratifier_code(name)], "stratum": items}


def _stratum_value(name: str, value: str) -> dict[str, Any]:
    if value == UNKNOWN:
        return {"text": UNKNOWN}
    if name == "organization":
        return {"text": f"Organization/{value}"}
    return {"coding": [{"system": DISTRICT_SYSTEM, "code": value}], "text": value}


def _population_code(code: str) -> dict[str, Any]:
    return {"coding": [{"system": POPULATION_SYSTEM, "code": code}]}


def _stratifier_code(name: str) -> dict[str, Any]:
    return {"coding": [{"system": STRATIFIER_SYSTEM, "code": name}], "text": STRATIFIERS[name]}

"""Measures and the MeasureReports their evaluation gives (FHIR R4 Measure, Da Vinci DEQM report shapes).

A summary report counts each population and scores it, overall and stratified by managing organization and by
GB/T 2260 district: a proportion scores numerator / denominator (0..1); a continuous-variable measure (the referral
loop's times) scores the median of its cases' observations, in hours (cqf-aggregateMethod median). A subject-list report adds, for each population, a
List of its subjects (contained, as HAPI's and cqf-ruler's do; DEQM would have a List of individual MeasureReports,
which says nothing more here), so that an analyst can check a number against the residents behind it.
"""

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from app.cdc.cases import DENOMINATOR, MEASURED, NUMERATOR, POPULATIONS, UNMEASURED, Case, median_value
from app.cdc.indicators import Indicator
from app.store import dates

POPULATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-population"
SCORING_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-scoring"
IMPROVEMENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-improvement-notation"
AGGREGATE_METHOD = "http://hl7.org/fhir/us/cqfmeasures/StructureDefinition/cqfm-aggregateMethod"
HOURS = {"unit": "h", "system": "http://unitsofmeasure.org", "code": "h"}
STRATIFIER_SYSTEM = "urn:qiao:measure-stratifier"
STRATIFIERS = {"organization": "管理机构 (managing organization)", "district": "行政区划 GB/T 2260 (district)"}
DISTRICT_SYSTEM = "urn:qiao:gb-t-2260"
UNKNOWN = "unknown"


def measure(indicator: Indicator, base: str) -> dict[str, Any]:
    """The Measure: what is counted, in words, and how the report is stratified."""
    if indicator.scoring == "proportion":
        populations = {"initial-population": indicator.denominator, "denominator": indicator.denominator,
                       "denominator-exclusion": "分母中无法判定者（见 README：失访 等设置）", "numerator": indicator.numerator}
        description = f"{indicator.numerator} / {indicator.denominator} × 100%"
    else:
        populations = {"initial-population": indicator.denominator, MEASURED: indicator.denominator,
                       UNMEASURED: "尚未到达该阶段者", "measure-observation": indicator.numerator}
        description = f"{indicator.numerator}的中位数（{indicator.denominator}）"
    extension = [] if indicator.scoring == "proportion" else [{"url": AGGREGATE_METHOD, "valueCode": "median"}]
    return {
        "resourceType": "Measure", "id": indicator.id, "url": f"{base}/Measure/{indicator.id}",
        **({"extension": extension} if extension else {}),
        "identifier": [{"system": "urn:qiao:measure", "value": indicator.id}],
        "name": indicator.id.replace("-", "_"), "title": indicator.title, "status": "active", "experimental": False,
        "publisher": "Qiao", "description": description,
        "scoring": {"coding": [{"system": SCORING_SYSTEM, "code": indicator.scoring}]},
        "improvementNotation": _improvement(indicator),
        "group": [{
            "population": [{"code": _population_code(code), "description": text,
                            "criteria": {"language": "text/plain", "expression": text}} for code, text in populations.items()],
            "stratifier": [{"code": _stratifier_code(code), "description": text} for code, text in STRATIFIERS.items()],
        }],
    }


def report(indicator: Indicator, cases: Sequence[Case], *, base: str, period: dict[str, str], subject_list: bool,
           reporter: str | None, generated: datetime) -> dict[str, Any]:
    codes = POPULATIONS[indicator.scoring]
    populations = [_population(code, cases, subject_list) for code in codes]
    group: dict[str, Any] = {"population": populations}
    score = _score(indicator.scoring, cases)
    if score is not None:
        group["measureScore"] = score
    group["stratifier"] = [_stratifier(indicator.scoring, name, cases) for name in STRATIFIERS]
    content: dict[str, Any] = {"resourceType": "MeasureReport"}
    if subject_list:
        content["contained"] = [_list(code, cases) for code in codes]
    content |= {
        "status": "complete", "type": "subject-list" if subject_list else "summary",
        "measure": f"{base}/Measure/{indicator.id}", "date": dates.instant(generated), "period": period,
        "improvementNotation": _improvement(indicator), "group": [group],
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


def _improvement(indicator: Indicator) -> dict[str, Any]:
    """A higher rate is better; a shorter time is."""
    code = "increase" if indicator.scoring == "proportion" else "decrease"
    return {"coding": [{"system": IMPROVEMENT_SYSTEM, "code": code}]}


def _score(scoring: str, cases: Iterable[Case]) -> dict[str, Any] | None:
    """measureScore: the proportion, or the median observation (hours); None when nothing was scored."""
    if scoring == "proportion":
        counts = Counter(code for c in cases for code in c.populations)
        return {"value": round(counts[NUMERATOR] / counts[DENOMINATOR], 4)} if counts[DENOMINATOR] else None
    median = median_value(cases)
    return None if median is None else {"value": median, **HOURS}


def _stratifier(scoring: str, name: str, cases: Iterable[Case]) -> dict[str, Any]:
    strata: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        strata[getattr(case, name) or UNKNOWN].append(case)
    items = []
    for value in sorted(strata):
        stratum: dict[str, Any] = {"value": _stratum_value(name, value),
                                   "population": [_population(code, strata[value], False) for code in POPULATIONS[scoring]]}
        score = _score(scoring, strata[value])
        if score is not None:
            stratum["measureScore"] = score
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

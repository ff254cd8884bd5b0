"""The national quality indicators (国家基本公共卫生服务规范, DOMAIN §5) with the ids of CONVENTIONS, each worked out
as cases: one per subject (a resident, or a referral), with the populations it falls in, so that a summary counts
them and a subject list names them from the same evaluation.

The open points of the national text are settings (README, "Quality indicators"): whether a resident without a
reading in the period (失访) counts as not controlled, whether residents of 65 and over are controlled below 150/90,
which follow-up is "the latest", and how many face-to-face follow-ups a year make management standard (规范管理).
"""

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy.orm import Session

from app.auth.principal import Principal
from app.cdc import population, referral_cases
from app.cdc.cases import Case, case
from app.cdc.followups import Reading
from app.cdc.population import Period, Resident
from app.cdc.registries import REGISTRIES
from app.config import get_settings
from app.errors import Forbidden, InvalidRequest, NotFound
from app.store import dates
from app.store.rules import WriteRule


@dataclass(frozen=True)
class Indicator:
    id: str
    title: str
    numerator: str
    denominator: str
    kind: str  # control | standardized | closed-loop | followup-completion | time-to-accept | time-to-complete | escalations
    programme: str | None = None  # the registry's programme, for the disease indicators
    scoring: str = "proportion"  # or continuous-variable: the median of the cases' values, in hours


INDICATORS = {i.id: i for i in (
    Indicator("htn-control-rate", "管理人群血压控制率 (blood pressure control rate)",
              "年内最近一次随访血压达标人数", "年内已管理的高血压患者人数", "control", "hypertension"),
    Indicator("t2dm-control-rate", "管理人群血糖控制率 (blood glucose control rate)",
              "年内最近一次随访空腹血糖达标人数", "年内已管理的2型糖尿病患者人数", "control", "t2dm"),
    Indicator("htn-standardized-management-rate", "高血压患者规范管理率 (hypertension standardised management rate)",
              "按照规范要求进行高血压患者健康管理的人数", "年内已管理的高血压患者人数", "standardized", "hypertension"),
    Indicator("t2dm-standardized-management-rate", "2型糖尿病患者规范管理率 (type 2 diabetes standardised management rate)",
              "按照规范要求进行2型糖尿病患者健康管理的人数", "年内已管理的2型糖尿病患者人数", "standardized", "t2dm"),
    Indicator("followup-completion-rate", "转诊随访按时完成率 (referral follow-up completion rate)",
              "期内到期且按时完成的转诊随访任务数", "期内到期的转诊随访任务数", "followup-completion"),
    Indicator("referral-closed-loop-rate", "上转闭环率 (referral closed-loop rate)",
              "期内发起且结果已回传、社区已随访的上转数", "期内发起的上转数", "closed-loop"),
    Indicator("referral-time-to-accept", "上转接收时长 (time to accept an upward referral, median hours)",
              "从发出到接收医院同意的小时数", "期内发起的上转数（尚未同意者除外）", "time-to-accept", scoring="continuous-variable"),
    Indicator("referral-time-to-complete", "上转结果回传时长 (time to complete an upward referral, median hours)",
              "从发出到接收医院回传结果的小时数", "期内发起的上转数（尚未完成者除外）", "time-to-complete", scoring="continuous-variable"),
    Indicator("referral-escalation-resolution-rate", "转诊超时处理率 (overdue referrals and follow-ups resolved)",
              "期内超时且已处理的数量", "期内超时（未接收、未同意、随访逾期）的数量", "escalations"),
)}


@dataclass(frozen=True)
class Rules:
    lost_is_uncontrolled: bool
    elderly_bp: bool
    latest: str  # "with-reading": the latest follow-up that has a reading; "any": the latest follow-up
    face_to_face_per_year: int

    @classmethod
    def configured(cls) -> "Rules":
        s = get_settings()
        return cls(s.indicator_lost_is_uncontrolled, s.indicator_elderly_bp, s.indicator_latest, s.indicator_face_to_face_per_year)


def indicator(measure_id: str) -> Indicator:
    found = INDICATORS.get(measure_id)
    if found is None:
        raise NotFound(f"Measure/{measure_id} is not known; the indicators are {', '.join(INDICATORS)}", expression=["Measure"])
    return found


def evaluate(session: Session, measure: Indicator, period: Period, principal: Principal, rules: Rules) -> list[Case]:
    """The indicator's cases in the period, among the subjects the principal may see."""
    if measure.kind == "closed-loop":
        return referral_cases.closed_loop(session, period, principal)
    if measure.kind == "followup-completion":
        return referral_cases.followup_completion(session, period, principal)
    if measure.kind in referral_cases.REACHED:
        return referral_cases.time_to(session, period, principal, referral_cases.REACHED[measure.kind])
    if measure.kind == "escalations":
        return referral_cases.escalations(session, period, principal)
    assert measure.programme is not None
    registry = next(r for r in REGISTRIES.values() if r.programme == measure.programme)
    residents = population.managed(session, registry, period, principal)
    if measure.kind == "standardized":
        required = required_followups(period, rules.face_to_face_per_year)
        counts = population.face_to_face_counts(session, measure.programme, period)
        return [_case(r, standard=counts.get(r.master_id, 0) >= required) for r in residents.values()]
    latest = population.latest_followups(session, measure.programme, period, with_reading=rules.latest == "with-reading")
    cases = []
    for resident in residents.values():
        followup = latest.get(resident.master_id)
        reading = followup.reading if followup else None
        if reading is None or not has_value(measure.programme, reading):
            cases.append(_case(resident, standard=False, excluded=not rules.lost_is_uncontrolled))
            continue
        assert followup is not None
        age = age_on(resident.birth_date, dates.from_micros(followup.at).astimezone(get_settings().zone).date())
        cases.append(_case(resident, standard=controlled(measure.programme, reading, age, rules)))
    return cases


def _case(resident: Resident, *, standard: bool, excluded: bool = False) -> Case:
    return case(f"Patient/{resident.master_id}", resident.organization, resident.district, counted=not excluded, met=standard)


def required_followups(period: Period, per_year: int) -> int:
    """Face-to-face follow-ups that make management standard in this period: the yearly number, pro rata for a
    shorter or longer period, to the nearest whole one (a quarter asks for one of four, a leap year for four)."""
    return max(1, math.floor(per_year * period.days / 365 + 0.5))


def has_value(programme: str, reading: Reading) -> bool:
    if programme == "hypertension":
        return reading.systolic is not None and reading.diastolic is not None
    return reading.glucose is not None


def controlled(programme: str, reading: Reading, age: int | None, rules: Rules) -> bool:
    """达标: blood pressure below 140/90 (150/90 from 65 when that band is on); fasting glucose below 7.0 mmol/L."""
    if programme == "hypertension":
        assert reading.systolic is not None and reading.diastolic is not None
        systolic_limit = 150 if rules.elderly_bp and age is not None and age >= 65 else 140
        return reading.systolic < systolic_limit and reading.diastolic < 90
    assert reading.glucose is not None
    return reading.glucose < 7.0


def age_on(birth: date | None, day: date) -> int | None:
    if birth is None:
        return None
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def period(start: str | None, end: str | None) -> Period:
    """[periodStart, periodEnd] as whole dates in the configured zone (periodEnd 2025-12-31 takes in that day)."""
    if not start or not end:
        missing = [name for name, value in (("periodStart", start), ("periodEnd", end)) if not value]
        raise InvalidRequest(f"$evaluate-measure needs {' and '.join(missing)} (a date such as 2025-01-01)", expression=missing)
    zone = get_settings().zone
    try:
        low, high = dates.date_range(start, zone)[0], dates.date_range(end, zone)[1]
    except dates.BadDate as error:
        raise InvalidRequest(f"periodStart/periodEnd: {error}", expression=["periodStart", "periodEnd"]) from error
    if high <= low:
        raise InvalidRequest(f"periodEnd {end} is before periodStart {start}", expression=["periodEnd"])
    return Period(dates.from_micros(low), dates.from_micros(high))


def district(value: str | None) -> str | None:
    """A district to narrow a report to: a GB/T 2260 county code."""
    if value is not None and not re.fullmatch(r"\d{6}", value):
        raise InvalidRequest(f"district {value!r} is not a GB/T 2260 county code (6 digits)", expression=["district"])
    return value


def within(cases: Iterable[Case], organization: str | None, district: str | None) -> list[Case]:
    """The cases counted under this organization and/or district."""
    return [c for c in cases if (organization is None or c.organization == organization) and (district is None or c.district == district)]


def _refuse(_session: Session, write: Any, _principal: Principal) -> None:
    raise Forbidden(f"Measures are Qiao's indicators ({', '.join(INDICATORS)}); they are read and evaluated, not written",
                    expression=["Measure"])


RULE = WriteRule(frozenset({"Measure"}), check=_refuse)

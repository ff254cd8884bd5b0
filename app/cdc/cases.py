"""A case: one subject of an indicator (a resident, a referral), where it counts and the populations it is in, so
that a summary counts cases and a subject list names them from the same evaluation."""

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

INITIAL, DENOMINATOR, EXCLUSION, NUMERATOR = "initial-population", "denominator", "denominator-exclusion", "numerator"
MEASURED, UNMEASURED = "measure-population", "measure-population-exclusion"
POPULATIONS = {"proportion": (INITIAL, DENOMINATOR, EXCLUSION, NUMERATOR), "continuous-variable": (INITIAL, MEASURED, UNMEASURED)}


@dataclass(frozen=True)
class Case:
    subject: str  # a reference: Patient/{master} or Task/{id}
    organization: str | None
    district: str | None
    populations: frozenset[str]
    value: float | None = None  # a continuous-variable measure's observation of this case


def case(subject: str, organization: str | None, district: str | None, *, counted: bool, met: bool) -> Case:
    """In the initial population; then in the denominator (and the numerator when `met`), or excluded from it."""
    if not counted:
        return Case(subject, organization, district, frozenset({INITIAL, EXCLUSION}))
    return Case(subject, organization, district, frozenset({INITIAL, DENOMINATOR} | ({NUMERATOR} if met else set())))


def measured(subject: str, organization: str | None, district: str | None, value: float | None) -> Case:
    """A continuous-variable case: observed (`value`), or not (yet) observable and so excluded."""
    if value is None:
        return Case(subject, organization, district, frozenset({INITIAL, MEASURED, UNMEASURED}))
    return Case(subject, organization, district, frozenset({INITIAL, MEASURED}), value)


def median_value(cases: Iterable[Case]) -> float | None:
    """A continuous-variable measure's score: the median of the cases observed (None when none was)."""
    values = [c.value for c in cases if c.value is not None]
    return round(statistics.median(values), 2) if values else None

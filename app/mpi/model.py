"""The match model: Fellegi–Sunter over Chinese-aware comparisons, with term-frequency adjustment, and the safety
rules that keep a probable match of two different people out of the automatic path.

Each comparison puts a pair of records into a level (0 = agree best). A level's weight is log2(m/u): m is how often
the level occurs when the records are one person, u how often when they are two. The pair's match weight is the
prior's log-odds plus the levels' weights; a missing value on either side weighs nothing. For names and phones that
agree exactly, u is the value's own frequency (张伟 is common, so agreeing on it says less than on 欧阳翠花).
"""

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from app.mpi import id_number, names
from app.mpi.features import Features

Levels = dict[str, int | None]

#: comparison → its levels' names, best agreement first
COMPARISONS: dict[str, tuple[str, ...]] = {
    "id_number": ("same", "typo", "unrelated", "different"),
    "name": ("same characters", "same pinyin", "same surname, given name close", "different"),
    "birth_date": ("same", "one part differs", "different"),
    "sex": ("same", "different"),
    "phone": ("shared", "none shared"),
    "insurance": ("same", "different"),
    "address": ("same", "same dwelling", "same region", "different"),
}
ID_DIFFERENT = 3
NAME_DIFFERENT = 3


def two_people(a: Features, b: Features) -> bool:
    """Two valid, different ID numbers: two people whatever else agrees (a typo cannot keep both valid)."""
    return a.id_valid and b.id_valid and a.id_number != b.id_number


def conflicts(a: Features, b: Features) -> bool:
    """Birth dates more than a typo apart, or different sexes: whatever else agrees, a steward decides."""
    return _birth_date(a.birth_date, b.birth_date) == 2 or bool(a.sex and b.sex and a.sex != b.sex)


def compare(a: Features, b: Features) -> Levels:
    return {
        "id_number": _id_number(a, b),
        "name": _name(a, b),
        "birth_date": _birth_date(a.birth_date, b.birth_date),
        "sex": None if not (a.sex and b.sex) else int(a.sex != b.sex),
        "phone": None if not (a.phones and b.phones) else int(not set(a.phones) & set(b.phones)),
        "insurance": None if not (a.insurance and b.insurance) else int(a.insurance != b.insurance),
        "address": _address(a, b),
    }


def _id_number(a: Features, b: Features) -> int | None:
    if not (a.id_number and b.id_number):
        return None
    difference = id_number.compare(a.id_number, b.id_number).difference
    return ("same", "typo", "unrelated", "different").index(difference.value)


def _name(a: Features, b: Features) -> int | None:
    if not (a.name and b.name):
        return None
    if a.name.chars and a.name.chars == b.name.chars:
        return 0
    if a.name.pinyin == b.name.pinyin:
        return 0 if a.name.chars is None and b.name.chars is None else 1
    if a.name.sound == b.name.sound:
        return 1
    if names.sound(a.name.surname) == names.sound(b.name.surname) and _close(_given_sound(a.name), _given_sound(b.name)):
        return 2
    return 3


def _given_sound(name: names.Name) -> str:
    return names.sound(name.pinyin[len(name.surname):])


@lru_cache(maxsize=1 << 19)
def _close(x: str, y: str) -> bool:
    """Given names one edit apart in their pinyin letters, or one the start of the other (a dropped character).
    Cached: a district's given names are few, and a rebuild compares them millions of times."""
    if not x or not y:
        return False
    if x.startswith(y) or y.startswith(x):
        return True
    if abs(len(x) - len(y)) > 1:
        return False
    return _edits(x, y) <= 1


def _edits(x: str, y: str) -> int:
    previous = list(range(len(y) + 1))
    for i, cx in enumerate(x, 1):
        row = [i]
        for j, cy in enumerate(y, 1):
            row.append(min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (cx != cy)))
        previous = row
    return previous[-1]


def _birth_date(a: str | None, b: str | None) -> int | None:
    if not (a and b):
        return None
    if a == b:
        return 0
    ya, ma, da = a[:4], a[5:7], a[8:10]
    yb, mb, db = b[:4], b[5:7], b[8:10]
    differing = (ya != yb) + (ma != mb) + (da != db)
    swapped = ya == yb and ma == db and da == mb
    return 1 if differing == 1 or swapped else 2


def _address(a: Features, b: Features) -> int | None:
    if not ((a.address or a.region) and (b.address or b.region)):
        return None
    same_region = a.region is None or b.region is None or a.region == b.region
    if a.address and a.address == b.address and same_region:
        return 0
    if a.dwelling and a.dwelling == b.dwelling and same_region and _same_street(a.street, b.street):
        return 1
    if a.region and a.region == b.region:
        return 2
    return 3


def _same_street(a: str | None, b: str | None) -> bool:
    """One street, or not known on one side: 8-3-1303 on 劲松路 is not 8-3-1303 on 学院路. One may hold the other
    ("北京市劲松路" and "劲松路": what was left of a city written out)."""
    return not a or not b or a in b or b in a


#: From this match probability a pair not linked goes to review. Below it a steward would nearly always say
#: "different": at 1,000,000 records the pairs between 0.5 and 0.95 were 11,949 reviews, 10 of them one person (namesakes
#: born near the same day); at 50,000 none of them was (tests/benchmarks/README.md, stop 33).
REVIEW = 0.95


@dataclass
class Model:
    """m and u per comparison level, the prior probability that a blocked pair is one person, and the thresholds."""

    m: dict[str, list[float]]
    u: dict[str, list[float]]
    prior: float
    link: float = 0.999
    review: float = REVIEW
    trained_on: dict[str, Any] = field(default_factory=dict)

    def weight(self, levels: Levels, frequency: Callable[[str, int], float | None] = lambda c, lv: None) -> float:
        """The pair's match weight (log2 odds); `frequency(comparison, level)` gives the agreeing value's share of all
        records, for term-frequency adjustment, or None."""
        total = _log_odds(self.prior)
        for comparison, level in levels.items():
            if level is None:
                continue
            u = self.u[comparison][level]
            share = frequency(comparison, level)
            if share is not None:
                u = max(share, 1e-9)
            total += math.log2(self.m[comparison][level] / u)
        return total

    def reweigh(self, weight: float, prior: float) -> float:
        """The same evidence with another prior than the model's (a blocked pair's)."""
        return weight - _log_odds(self.prior) + _log_odds(prior)

    @staticmethod
    def probability(weight: float) -> float:
        return 1 / (1 + 2 ** (-weight)) if weight > -60 else 0.0

    def explain(self, levels: Levels) -> dict[str, str]:
        return {c: COMPARISONS[c][level] for c, level in levels.items() if level is not None}

    def to_yaml(self) -> str:
        document = {"prior": self.prior, "link": self.link, "review": self.review, "trained_on": self.trained_on,
                    "comparisons": {c: {"levels": list(COMPARISONS[c]), "m": [round(v, 6) for v in self.m[c]],
                                        "u": [round(v, 8) for v in self.u[c]]} for c in COMPARISONS}}
        return yaml.safe_dump(document, allow_unicode=True, sort_keys=False)

    @classmethod
    def load(cls, path: Path) -> "Model":
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        comparisons = document["comparisons"]
        return cls(m={c: comparisons[c]["m"] for c in COMPARISONS}, u={c: comparisons[c]["u"] for c in COMPARISONS},
                   prior=document["prior"], link=document.get("link", 0.999), review=document.get("review", REVIEW),
                   trained_on=document.get("trained_on") or {})


def _log_odds(probability: float) -> float:
    return math.log2(probability / (1 - probability))


# --- grades and safety rules ---------------------------------------------------------------------------------

CERTAIN, PROBABLE, POSSIBLE, CERTAINLY_NOT = "certain", "probable", "possible", "certainly-not"


def grade(model: Model, levels: Levels, probability: float, namesake_probability: float = 0.0) -> str:
    """The match grade (FHIR match-grade codes). Two valid different ID numbers are two people whatever else agrees,
    and so are two wholly different names that no ID or insurance number joins (spouses, parents and children share
    a phone and a dwelling, not a name). An automatic link ("probable" or better) also needs the ID number, or the
    name with corroboration, to agree, the name not to differ wholly, and no disagreement on sex or birth date, so
    that twins, spouses, namesakes and a number keyed for the wrong person go to review at most.
    `namesake_probability` is the pair's probability as if any resident of the population could be this one (see
    `_safe_to_link`)."""
    if levels.get("id_number") == ID_DIFFERENT:
        return CERTAINLY_NOT
    if levels.get("name") == NAME_DIFFERENT and levels.get("id_number") not in (0, 1) and levels.get("insurance") != 0:
        return CERTAINLY_NOT
    if probability < model.review:
        return CERTAINLY_NOT
    if probability < model.link or not _safe_to_link(levels, namesake_probability >= model.link):
        return POSSIBLE
    return CERTAIN if levels.get("id_number") == 0 and (levels.get("name") or 0) <= 1 else PROBABLE


def _safe_to_link(levels: Levels, rare_enough: bool) -> bool:
    """Without an agreeing ID number, the name must agree and either something only the person has (phone,
    insurance number, dwelling) backs it, or the name and the birth date are rare enough together: a namesake born
    the same day is likely among thousands of 张伟 in a district, unlikely for 欧阳翠花. `rare_enough` says that the
    probability with the prior of one resident in the whole population (not of one candidate in a block) and the
    name's term frequency still reaches the link threshold."""
    name_same = levels.get("name") in (0, 1)
    corroborated = levels.get("phone") == 0 or levels.get("insurance") == 0 or levels.get("address") in (0, 1)
    rare = rare_enough and levels.get("birth_date") == 0 and levels.get("sex") == 0
    identity_agrees = levels.get("id_number") in (0, 1) or (name_same and (corroborated or rare))
    # an agreeing ID number carries a name that is close, not a wholly different one: that is a number keyed for
    # someone else (a relative's, the form before), so a steward looks
    name_agrees = levels.get("name") in (None, 0, 1) or (levels.get("name") == 2 and levels.get("id_number") == 0)
    return identity_agrees and name_agrees and levels.get("sex") != 1 and levels.get("birth_date") != 2


# --- estimation ------------------------------------------------------------------------------------------------


def estimate_u(random_pairs: Iterable[Levels]) -> dict[str, list[float]]:
    """u from pairs drawn at random (nearly all two different people), smoothed so that no level is impossible."""
    counts = {c: [1.0] * len(levels) for c, levels in COMPARISONS.items()}
    for levels in random_pairs:
        for comparison, level in levels.items():
            if level is not None:
                counts[comparison][level] += 1
    return {c: [v / sum(values) for v in values] for c, values in counts.items()}


def match_probability(levels: Levels, m: dict[str, list[float]], u: dict[str, list[float]], prior: float,
                      fixed: Iterable[str] = ()) -> float:
    """The probability a pair is one person, by Bayes over its levels (those in `fixed` left out)."""
    odds = prior / (1 - prior)
    for comparison, level in levels.items():
        if level is not None and comparison not in fixed:
            odds *= m[comparison][level] / u[comparison][level]
    return 1.0 if odds == math.inf else odds / (1 + odds)


def estimate_m(blocked_pairs: Sequence[Levels], u: dict[str, list[float]], *, fixed: Iterable[str] = (), prior: float = 0.1,
               iterations: int = 30) -> tuple[dict[str, list[float]], float]:
    """m (and the share of matches) by expectation–maximisation over candidate pairs, with u held fixed, as Splink
    does. The comparisons in `fixed` are the ones the pairs were blocked on: they agree by construction, so they are
    left out of the likelihood and their m is not learnt here."""
    fixed = set(fixed)
    m = {c: [0.9] + [0.1 / (len(levels) - 1)] * (len(levels) - 1) for c, levels in COMPARISONS.items()}
    for _ in range(iterations):
        counts = {c: [0.01] * len(levels) for c, levels in COMPARISONS.items()}
        expected_matches = 0.0
        for levels in blocked_pairs:
            p = match_probability(levels, m, u, prior, fixed)
            expected_matches += p
            for comparison, level in levels.items():
                if level is not None:
                    counts[comparison][level] += p
        m = {c: [v / sum(values) for v in values] for c, values in counts.items()}
        prior = min(max(expected_matches / max(len(blocked_pairs), 1), 1e-6), 0.999)
    return m, prior

"""Resident identity card numbers (居民身份证号, GB 11643-1999): normal form, validity, what they embed, and how
two of them differ. Resident matching leans on them more than on anything else, so the comparison distinguishes a
clerk's typo from a different person."""

import re
from dataclasses import dataclass
from datetime import date
from enum import Enum
from functools import lru_cache

SYSTEM = "urn:oid:2.16.156.10011.1.3"
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"
_PROVINCES = {11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52, 53, 54,
              61, 62, 63, 64, 65, 71, 81, 82}


def check_character(body: str) -> str:
    """The MOD 11-2 check character of the first 17 digits."""
    return _CHECK[sum(int(d) * w for d, w in zip(body, _WEIGHTS, strict=True)) % 11]


def normalise(value: str | None) -> str | None:
    """The 18-character form used for matching: spaces dropped, `x` upper-cased, a legacy 15-digit number upgraded
    (born 19xx, check character computed). Anything else is returned cleaned but unjudged (see `is_valid`)."""
    if not value:
        return None
    text = re.sub(r"[\s-]", "", value).upper()
    if re.fullmatch(r"\d{15}", text):
        body = text[:6] + "19" + text[6:]
        return body + check_character(body)
    return text or None


@lru_cache(maxsize=65536)
def is_valid(number: str | None) -> bool:
    """(Cached: matching compares each number with every candidate's.) A well-formed 18-character number: digits, a right check character, a province code and a real birth date."""
    if not number or not re.fullmatch(r"\d{17}[\dX]", number):
        return False
    return check_character(number[:17]) == number[17] and int(number[:2]) in _PROVINCES and birth_date(number) is not None


def birth_date(number: str) -> date | None:
    """The birth date the number embeds (positions 7-14), if it is a real date not in the future."""
    try:
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return None
    return born if date(1880, 1, 1) <= born <= date.today() else None


def sex(number: str) -> str:
    """FHIR gender from the sequence number's parity (odd male, even female)."""
    return "male" if int(number[16]) % 2 else "female"


class Difference(Enum):
    SAME = "same"
    TYPO = "typo"  # one character replaced, or two neighbours swapped, and at least one side fails its check
    DIFFERENT = "different"  # both valid: two different people, whatever else agrees
    UNRELATED = "unrelated"  # differ by more than a typo, one of them malformed


@dataclass(frozen=True)
class Comparison:
    difference: Difference
    position: int | None = None  # where a typo is (0-based)


def compare(a: str, b: str) -> Comparison:
    """How two normalised numbers differ. Valid numbers cannot differ by one typo (MOD 11-2 detects every single
    substitution and every swap of unequal neighbours), so two valid different numbers are two people."""
    if a == b:
        return Comparison(Difference.SAME)
    if is_valid(a) and is_valid(b):
        return Comparison(Difference.DIFFERENT)
    if len(a) == len(b):
        diffs = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if len(diffs) == 1:
            return Comparison(Difference.TYPO, diffs[0])
        if len(diffs) == 2 and diffs[1] == diffs[0] + 1 and a[diffs[0]] == b[diffs[1]] and a[diffs[1]] == b[diffs[0]]:
            return Comparison(Difference.TYPO, diffs[0])
    return Comparison(Difference.UNRELATED)

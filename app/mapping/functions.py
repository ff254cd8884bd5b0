"""The named functions mappings may call (`{fn: name, args: [...]}`): every piece of logic a mapping needs, each
small, pure and unit-tested. A function raises ValueError for input it cannot use; the engine names the field."""

import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from app.config import get_settings
from app.mpi.id_number import check_character

FUNCTIONS: dict[str, Callable[..., Any]] = {}
_F = TypeVar("_F", bound=Callable[..., Any])
UCUM = "http://unitsofmeasure.org"
_HL7_TIME = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$")


def mapping_function(function: _F) -> _F:
    FUNCTIONS[function.__name__] = function
    return function


@mapping_function
def hl7_datetime(value: str | None) -> str | None:
    """HL7 v2 DTM (YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]) → FHIR dateTime, keeping its precision. A time without an
    offset is local time in QIAO_TIMEZONE (Chinese systems send Asia/Shanghai)."""
    if value is None:
        return None
    match = _HL7_TIME.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not an HL7 date/time (YYYYMMDD[HHMM[SS]][+ZZZZ])")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0))
    except ValueError as error:
        raise ValueError(f"{value!r} is not a real date/time") from error
    if hour is None:
        return "-".join(p for p in (year, month, day) if p)
    moment = datetime(int(year), int(month), int(day), int(hour), int(minute or 0), int(second or 0))
    if offset:
        zone = f"{offset[:3]}:{offset[3:]}"
    else:
        local = moment.replace(tzinfo=get_settings().zone).strftime("%z")
        zone = f"{local[:3]}:{local[3:]}"
    return f"{year}-{month}-{day}T{hour}:{minute or '00'}:{second or '00'}{fraction or ''}{zone}"


@mapping_function
def hl7_date(value: str | None) -> str | None:
    """The date part of an HL7 DTM/DT as a FHIR date (a birth date sent with a time keeps only the day)."""
    if value is None:
        return None
    return hl7_datetime(value[:8] if len(value) >= 8 else value)


@mapping_function
def id_card(value: str | None) -> str | None:
    """A resident ID number in GB 11643 form: 18 characters, upper-case X; a legacy 15-digit number is upgraded.
    Other values are kept as sent (resident matching judges their validity)."""
    if value is None:
        return None
    text = value.strip().upper()
    if re.fullmatch(r"\d{15}", text):
        body = text[:6] + "19" + text[6:]
        return body + check_character(body)
    return text


@mapping_function
def join(*parts: str | None) -> str | None:
    """Parts concatenated without a separator (Chinese names: family name then given name)."""
    present = [p for p in parts if p]
    return "".join(present) if present else None


@mapping_function
def if_given(value: Any, result: Any) -> Any:
    """`result` when the value is given, else absent: a lost follow-up's Encounter is cancelled, not finished."""
    return None if value is None else result


@mapping_function
def decimal(value: str | None) -> float | int | None:
    if value is None:
        return None
    try:
        number = Decimal(value.strip())
    except InvalidOperation as error:
        raise ValueError(f"{value!r} is not a number") from error
    return int(number) if number == number.to_integral_value() and "." not in value else float(number)


@mapping_function
def quantity(value: str | None, unit: str | None, ucum: str | None = None) -> dict[str, Any] | None:
    """A Quantity: the unit as sent, and its UCUM code when known."""
    number = decimal(value)
    if number is None:
        return None
    result: dict[str, Any] = {"value": number}
    if unit or ucum:
        result["unit"] = unit or ucum
    if ucum:
        result.update({"system": UCUM, "code": ucum})
    return result


@mapping_function
def pick(entry: Any, key: str) -> Any:
    """One part of a code table entry that is an object (e.g. the LOINC code, display or unit of a local code)."""
    return entry.get(key) if isinstance(entry, dict) else None


@mapping_function
def observation_value(value_type: str | None, value: str | None, unit: str | None, ucum: str | None = None) -> dict[str, Any] | None:
    """OBX-5 by its type OBX-2: numbers as valueQuantity (unit as sent, UCUM code when known), text as valueString,
    coded as valueCodeableConcept."""
    if value is None:
        return None
    kind = (value_type or "ST").upper()
    if kind == "NM":
        return {"valueQuantity": quantity(value, unit, ucum)}
    if kind == "SN":
        comparator, _, number = value.partition("^")
        if comparator in ("<", "<=", ">", ">="):
            return {"valueQuantity": {**(quantity(number, unit, ucum) or {}), "comparator": comparator}}
        return {"valueQuantity": quantity(number or comparator, unit, ucum)}
    if kind in ("CE", "CWE", "CNE"):
        return {"valueCodeableConcept": {"text": value}}
    if kind in ("DT", "TS", "DTM"):
        return {"valueDateTime": hl7_datetime(value)}
    if kind in ("ST", "TX", "FT"):
        return {"valueString": value}
    raise ValueError(f"OBX value type {value_type!r} is not supported (NM, SN, ST, TX, FT, CE, CWE, CNE, DT, TS)")


@mapping_function
def first(*values: Any) -> Any:
    """The first value present."""
    return next((v for v in values if v is not None), None)


_LOCAL_TIME = re.compile(r"^(\d{4})(?:[-/.年](\d{1,2})[-/.月](\d{1,2})日?|(\d{2})(\d{2}))(?:[ T](\d{1,2})[:：时](\d{2})(?:[:：分](\d{2}))?秒?)?$")


@mapping_function
def local_datetime(value: str | None) -> str | None:
    """A date or time as exports write it (2026-03-05, 2026/3/5, 2026年3月5日, 20260305, with an optional 09:30[:00],
    or ISO 8601 with an offset) → FHIR date or dateTime; a time without an offset is QIAO_TIMEZONE."""
    if value is None:
        return None
    text = value.strip()
    match = _LOCAL_TIME.match(text)
    if match is None:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError as error:
            raise ValueError(f"{value!r} is not a date (YYYY-MM-DD, YYYY/M/D, YYYY年M月D日, YYYYMMDD [HH:MM[:SS]])") from error
        return moment.isoformat() if moment.tzinfo else local_datetime(moment.strftime("%Y-%m-%d %H:%M:%S"))
    year, month, day, compact_month, compact_day, hour, minute, second = match.groups()
    digits = f"{year}{int(month or compact_month):02d}{int(day or compact_day):02d}"
    if hour is not None:
        digits += f"{int(hour):02d}{minute}{second or '00'}"
    return hl7_datetime(digits)


@mapping_function
def local_date(value: str | None) -> str | None:
    """The date part of `local_datetime` (a birth date or a follow-up date exported with a time of 00:00)."""
    moment = local_datetime(value)
    return moment[:10] if moment else None


@mapping_function
def text(pattern: str, *values: Any) -> str | None:
    """`pattern` with `{}` filled by the values in order (每日{}次，每次{}mg); absent when every value is."""
    if all(v is None for v in values):
        return None
    return pattern.format(*("?" if v is None else v for v in values))

"""FHIR date, dateTime and instant values as half-open ranges [low, high) of UTC microseconds.

A partial value covers its whole precision ("1980" is the year); a value without an offset is local time in the
configured zone (Asia/Shanghai by default), as Chinese systems send it.
"""

import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_MICROS = -(2**62)
MAX_MICROS = 2**62

_PATTERN = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


class BadDate(ValueError):
    pass


def micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def date_range(value: str, zone: ZoneInfo) -> tuple[int, int]:
    """The range covered by a FHIR date/dateTime/instant string."""
    match = _PATTERN.match(value.strip())
    if not match:
        raise BadDate(f"not a FHIR date: {value!r}")
    parts = match.groupdict()
    tz = _zone(parts["tz"], zone)
    try:
        year = int(parts["year"])
        if parts["month"] is None:
            start = datetime(year, 1, 1, tzinfo=tz)
            return micros(start), micros(datetime(year + 1, 1, 1, tzinfo=tz))
        month = int(parts["month"])
        if parts["day"] is None:
            start = datetime(year, month, 1, tzinfo=tz)
            end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
            return micros(start), micros(end)
        day = date(year, month, int(parts["day"]))
        if parts["hour"] is None:
            start = datetime(day.year, day.month, day.day, tzinfo=tz)
            return micros(start), micros(start + timedelta(days=1))
        start = datetime(day.year, day.month, day.day, int(parts["hour"]), int(parts["minute"]), tzinfo=tz)
        if parts["second"] is None:
            return micros(start), micros(start + timedelta(minutes=1))
        start = start.replace(second=int(parts["second"]))
        fraction = parts["fraction"]
        if fraction is None:
            return micros(start), micros(start + timedelta(seconds=1))
        digits = min(len(fraction), 6)
        start = start.replace(microsecond=int(fraction[:6].ljust(6, "0")))
        return micros(start), micros(start) + 10 ** (6 - digits)
    except ValueError as exc:
        raise BadDate(f"not a valid date: {value!r}") from exc


def start_of(value: object, zone: ZoneInfo) -> datetime | None:
    """When a FHIR date/dateTime/instant string begins; None for anything else (a missing or malformed element)."""
    if not isinstance(value, str):
        return None
    try:
        return from_micros(date_range(value, zone)[0])
    except BadDate:
        return None


def _zone(tz: str | None, default: ZoneInfo) -> tzinfo:
    if tz is None:
        return default
    if tz == "Z":
        return UTC
    sign = 1 if tz[0] == "+" else -1
    return timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))


def instant(moment: datetime) -> str:
    """FHIR instant with millisecond precision in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def aware(moment: datetime) -> datetime:
    """In UTC: SQLite returns naive datetimes (stored in UTC), PostgreSQL the session's zone."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def now() -> datetime:
    """Server time truncated to milliseconds, the precision meta.lastUpdated carries."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)

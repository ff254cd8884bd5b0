"""FHIR date strings as [low, high) ranges."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from app.store.dates import BadDate, date_range, from_micros

SHANGHAI = ZoneInfo("Asia/Shanghai")


def span(value: str) -> tuple[datetime, datetime]:
    low, high = date_range(value, SHANGHAI)
    return from_micros(low), from_micros(high)


def test_partial_dates_cover_their_precision_in_local_time() -> None:
    assert span("2024") == (datetime(2023, 12, 31, 16, tzinfo=UTC), datetime(2024, 12, 31, 16, tzinfo=UTC))
    assert span("2024-02") == (datetime(2024, 1, 31, 16, tzinfo=UTC), datetime(2024, 2, 29, 16, tzinfo=UTC))
    assert span("2024-12")[1] == datetime(2024, 12, 31, 16, tzinfo=UTC)
    assert span("2024-03-01") == (datetime(2024, 2, 29, 16, tzinfo=UTC), datetime(2024, 3, 1, 16, tzinfo=UTC))


def test_times_with_and_without_offset() -> None:
    assert span("2024-03-01T08:00:00Z")[0] == datetime(2024, 3, 1, 8, tzinfo=UTC)
    assert span("2024-03-01T08:00:00+08:00")[0] == datetime(2024, 3, 1, 0, tzinfo=UTC)
    assert span("2024-03-01T08:00:00")[0] == datetime(2024, 3, 1, 0, tzinfo=UTC)  # Asia/Shanghai
    low, high = span("2024-03-01T08:00:00.250Z")
    assert (high - low).total_seconds() == pytest.approx(0.001)
    low, high = span("2024-03-01T08:00")
    assert (high - low).total_seconds() == 60


@pytest.mark.parametrize("value", ["2024-13", "2024-02-30", "yesterday", "24-01-01", "2024-01-01T25:00:00Z", ""])
def test_bad_dates(value: str) -> None:
    with pytest.raises(BadDate):
        date_range(value, SHANGHAI)

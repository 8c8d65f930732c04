"""Record timestamps as text, checked against the standard library's calendar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from fleetgate.records import format_rfc3339_ms, rfc3339_seconds_text

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FIRST_MS = (datetime(1, 1, 1, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)
LAST_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - EPOCH) // timedelta(
    milliseconds=1
)


def by_datetime(ms: int) -> str:
    when = EPOCH + timedelta(milliseconds=ms)
    return when.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0") + f".{ms % 1000:03d}Z"


@given(st.integers(min_value=FIRST_MS, max_value=LAST_MS))
def test_every_millisecond_of_years_1_to_9999_formats_as_datetime_does(ms: int) -> None:
    assert format_rfc3339_ms(ms) == by_datetime(ms)


@given(st.integers(min_value=-(10**18), max_value=10**18))
def test_times_outside_the_calendar_are_clamped_to_its_ends(ms: int) -> None:
    expected = by_datetime(min(max(ms, FIRST_MS), LAST_MS))
    assert format_rfc3339_ms(ms) == expected


def test_edges() -> None:
    assert format_rfc3339_ms(0) == "1970-01-01T00:00:00.000Z"
    assert format_rfc3339_ms(-1) == "1969-12-31T23:59:59.999Z"
    assert format_rfc3339_ms(951_782_400_000) == "2000-02-29T00:00:00.000Z"
    assert rfc3339_seconds_text(1_560_161_086) == "2019-06-10T10:04:46"

"""Windows: fixed epoch-aligned buckets, calendar months with reset days and time zones."""

from __future__ import annotations

from calendar import monthrange
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meter.core.errors import PolicyError
from meter.core.windows import (
    CalendarMonthWindow,
    FixedWindow,
    Window,
    format_ms,
    parse_duration_ms,
    parse_window,
    window_label,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def ms(text: str) -> int:
    """Epoch ms of an RFC 3339 instant, or of UTC midnight for a bare date."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(milliseconds=1)


# --- fixed windows ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size_ms", "name"),
    [
        (MINUTE, "1m"),
        (15 * MINUTE, "15m"),
        (HOUR, "1h"),
        (DAY, "1d"),
        (2 * DAY, "2d"),
        (90_000, "90s"),
        (36 * HOUR, "36h"),
        (150 * MINUTE, "150m"),
        (1_500, "1500ms"),
        (1, "1ms"),
        (1_000, "1s"),
    ],
)
def test_fixed_window_name(size_ms: int, name: str) -> None:
    assert FixedWindow(size_ms).name == name


@pytest.mark.parametrize(
    ("size_ms", "ts", "start", "end"),
    [
        (15 * MINUTE, 0, 0, 15 * MINUTE),
        (15 * MINUTE, 15 * MINUTE - 1, 0, 15 * MINUTE),
        (15 * MINUTE, 15 * MINUTE, 15 * MINUTE, 30 * MINUTE),
        (15 * MINUTE, -1, -15 * MINUTE, 0),
        (15 * MINUTE, -15 * MINUTE, -15 * MINUTE, 0),
        (
            15 * MINUTE,
            ms("2022-03-01T10:07:31.5+00:00"),
            ms("2022-03-01T10:00Z"),
            ms("2022-03-01T10:15Z"),
        ),
        (DAY, ms("2022-03-01T23:59:59.999Z"), ms("2022-03-01"), ms("2022-03-02")),
        (90_000, 100_000, 90_000, 180_000),
        (7, -1, -7, 0),
    ],
)
def test_fixed_bucket(size_ms: int, ts: int, start: int, end: int) -> None:
    assert FixedWindow(size_ms).bucket(ts) == Window(start, end)


@pytest.mark.parametrize("size", [0, -1, True])
def test_fixed_window_rejects_bad_size(size: int) -> None:
    with pytest.raises((ValueError, TypeError)):
        FixedWindow(size)


@given(size=st.integers(1, 40 * DAY), ts=st.integers(-(2**50), 2**50))
def test_fixed_bucket_properties(size: int, ts: int) -> None:
    window = FixedWindow(size).bucket(ts)
    assert window.start_ms <= ts < window.end_ms
    assert window.end_ms - window.start_ms == size
    assert window.start_ms % size == 0


@given(size=st.integers(1, 40 * DAY), stamps=st.lists(st.integers(-(2**45), 2**45), max_size=20))
def test_fixed_bucket_cache_agrees_with_a_fresh_spec(size: int, stamps: list[int]) -> None:
    reused = FixedWindow(size)
    for ts in stamps:
        assert reused.bucket(ts) == FixedWindow(size).bucket(ts)
        assert reused.bucket(ts + 1) == FixedWindow(size).bucket(ts + 1)


# --- calendar months ----------------------------------------------------------------------

NY = "America/New_York"


@pytest.mark.parametrize(
    ("reset_day", "tz", "ts", "start", "end"),
    [
        # reset on the 1st, UTC: plain calendar months
        (1, "UTC", "2022-01-31T23:59:59.999Z", "2022-01-01", "2022-02-01"),
        (1, "UTC", "2022-02-01T00:00:00Z", "2022-02-01", "2022-03-01"),
        (1, "UTC", "2022-12-31T12:00:00Z", "2022-12-01", "2023-01-01"),
        (1, "UTC", "2023-01-01T00:00:00Z", "2023-01-01", "2023-02-01"),
        (1, "UTC", "1969-12-31T23:59:59.999Z", "1969-12-01", "1970-01-01"),
        # reset day 31 clamps to the last day of short months
        (31, "UTC", "2022-01-30T23:59:59.999Z", "2021-12-31", "2022-01-31"),
        (31, "UTC", "2022-01-31T00:00:00Z", "2022-01-31", "2022-02-28"),
        (31, "UTC", "2022-02-27T23:59:59.999Z", "2022-01-31", "2022-02-28"),
        (31, "UTC", "2022-02-28T00:00:00Z", "2022-02-28", "2022-03-31"),
        (31, "UTC", "2022-04-30T00:00:00Z", "2022-04-30", "2022-05-31"),
        (31, "UTC", "2022-04-29T23:59:59.999Z", "2022-03-31", "2022-04-30"),
        # leap years: Feb 29 exists in 2024, not in 2023 (nor in 2100)
        (31, "UTC", "2024-02-28T12:00:00Z", "2024-01-31", "2024-02-29"),
        (31, "UTC", "2024-02-29T00:00:00Z", "2024-02-29", "2024-03-31"),
        (29, "UTC", "2023-02-28T05:00:00Z", "2023-02-28", "2023-03-29"),
        (29, "UTC", "2024-02-28T05:00:00Z", "2024-01-29", "2024-02-29"),
        (29, "UTC", "2100-02-28T00:00:00Z", "2100-02-28", "2100-03-29"),
        (30, "UTC", "2023-03-01T00:00:00Z", "2023-02-28", "2023-03-30"),
        # reset day 15 in New York; DST began 2022-03-13 and ended 2022-11-06
        (15, NY, "2022-03-15T03:59:59.999Z", "2022-02-15T05:00:00Z", "2022-03-15T04:00:00Z"),
        (15, NY, "2022-03-15T04:00:00Z", "2022-03-15T04:00:00Z", "2022-04-15T04:00:00Z"),
        (15, NY, "2022-11-15T04:59:59.999Z", "2022-10-15T04:00:00Z", "2022-11-15T05:00:00Z"),
        (15, NY, "2022-11-15T05:00:00Z", "2022-11-15T05:00:00Z", "2022-12-15T05:00:00Z"),
        # the local date differs from the UTC date near midnight
        (1, NY, "2022-03-01T04:59:59.999Z", "2022-02-01T05:00:00Z", "2022-03-01T05:00:00Z"),
        (5, "Europe/Paris", "2022-04-04T22:00:00Z", "2022-04-04T22:00:00Z", "2022-05-04T22:00:00Z"),
        # Santiago skips 00:00-01:00 on 2022-09-11: the month starts at the transition
        (11, "America/Santiago", "2022-09-12T00:00:00Z", "2022-09-11T04:00:00Z",
         "2022-10-11T03:00:00Z"),
    ],
)  # fmt: skip
def test_month_bucket(reset_day: int, tz: str, ts: str, start: str, end: str) -> None:
    window = CalendarMonthWindow(reset_day, tz).bucket(ms(ts))
    assert (format_ms(window.start_ms), format_ms(window.end_ms)) == (
        format_ms(ms(start)),
        format_ms(ms(end)),
    )


@pytest.mark.parametrize(
    ("reset_day", "tz", "name"),
    [
        (1, "UTC", "month"),
        (5, "UTC", "month:reset=5:tz=UTC"),
        (1, "Europe/Paris", "month:reset=1:tz=Europe/Paris"),
        (5, NY, "month:reset=5:tz=America/New_York"),
    ],
)
def test_month_name(reset_day: int, tz: str, name: str) -> None:
    assert CalendarMonthWindow(reset_day, tz).name == name


def test_month_cache_returns_the_same_window_and_survives_jumps() -> None:
    spec = CalendarMonthWindow(5, NY)
    first = spec.bucket(ms("2022-03-20T00:00:00Z"))
    assert spec.bucket(ms("2022-03-21T00:00:00Z")) is first
    earlier = spec.bucket(ms("2021-07-01T00:00:00Z"))
    assert earlier == Window(ms("2021-06-05T04:00:00Z"), ms("2021-07-05T04:00:00Z"))
    assert spec.bucket(ms("2022-03-20T00:00:00Z")) == first


def test_month_equality_and_hash_ignore_the_cache() -> None:
    used = CalendarMonthWindow(5, "UTC")
    used.bucket(0)
    fresh = CalendarMonthWindow(5, "UTC")
    assert used == fresh
    assert hash(used) == hash(fresh)
    assert CalendarMonthWindow(5, "UTC") != CalendarMonthWindow(6, "UTC")


@pytest.mark.parametrize(("reset_day", "tz"), [(0, "UTC"), (32, "UTC"), (1, "Mars/Olympus")])
def test_month_rejects_bad_arguments(reset_day: int, tz: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the argument decides the message
        CalendarMonthWindow(reset_day, tz)


def test_month_out_of_range_timestamp() -> None:
    with pytest.raises(ValueError, match="outside the supported years"):
        CalendarMonthWindow().bucket(ms("9999-12-15T00:00:00Z"))


TIMEZONES = [
    "UTC",
    NY,
    "Europe/Paris",
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "America/Santiago",  # DST changes at midnight
    "Pacific/Apia",  # skipped 2011-12-30 entirely
    "Asia/Kolkata",
    "America/St_Johns",
]
YEAR_1900 = ms("1900-01-01T00:00:00Z")
YEAR_2200 = ms("2200-01-01T00:00:00Z")


@given(
    reset_day=st.integers(1, 31),
    tz=st.sampled_from(TIMEZONES),
    ts=st.integers(YEAR_1900, YEAR_2200),
)
def test_month_bucket_properties(reset_day: int, tz: str, ts: int) -> None:
    fresh = CalendarMonthWindow(reset_day, tz)
    window = fresh.bucket(ts)
    assert window.start_ms <= ts < window.end_ms
    assert fresh.bucket(window.end_ms).start_ms == window.end_ms
    assert fresh.bucket(window.end_ms - 1) == window
    assert fresh.bucket(window.start_ms) == window
    assert fresh.bucket(window.start_ms - 1).end_ms == window.start_ms
    assert 27 * DAY < window.end_ms - window.start_ms < 32 * DAY


@given(
    reset_day=st.integers(1, 31),
    tz=st.sampled_from(TIMEZONES),
    stamps=st.lists(st.integers(YEAR_1900, YEAR_2200), max_size=10),
)
def test_month_cache_agrees_with_a_fresh_spec(reset_day: int, tz: str, stamps: list[int]) -> None:
    reused = CalendarMonthWindow(reset_day, tz)
    for ts in stamps:
        for probe in (ts, ts + 1, ts - DAY, ts + 20 * DAY):
            assert reused.bucket(probe) == CalendarMonthWindow(reset_day, tz).bucket(probe)


@given(
    reset_day=st.integers(1, 31),
    tz=st.sampled_from([t for t in TIMEZONES if t not in ("Pacific/Apia", "America/Santiago")]),
    ts=st.integers(YEAR_1900, YEAR_2200),
)
def test_month_starts_at_local_midnight_on_the_clamped_reset_day(
    reset_day: int, tz: str, ts: int
) -> None:
    start = CalendarMonthWindow(reset_day, tz).bucket(ts).start_ms
    local = (EPOCH + timedelta(milliseconds=start)).astimezone(ZoneInfo(tz))
    assert local.day == min(reset_day, monthrange(local.year, local.month)[1])
    assert (local.hour, local.minute, local.second, local.microsecond) == (0, 0, 0, 0)


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90s", 90_000),
        ("15m", 15 * MINUTE),
        ("1h", HOUR),
        ("1d", DAY),
        ("500ms", 500),
        ("2h30m", 150 * MINUTE),
        ("1d12h", 36 * HOUR),
        ("1m30s250ms", 90_250),
        (" 15m ", 15 * MINUTE),
        (60, MINUTE),
        (1, 1_000),
    ],
)
def test_parse_duration(value: object, expected: int) -> None:
    assert parse_duration_ms(value, "w") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0s", "must be positive"),
        (0, "must be positive"),
        (-5, "must be positive"),
        (True, "duration like"),
        (1.5, "duration like"),
        (None, "duration like"),
        ("15", "invalid duration"),
        ("15M", "invalid duration"),
        ("1 h", "invalid duration"),
        ("", "invalid duration"),
        ("-1m", "invalid duration"),
        ("1m1h", "largest to smallest"),
        ("1m1m", "largest to smallest"),
    ],
)
def test_parse_duration_errors(value: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as caught:
        parse_duration_ms(value, "tiers.x.caps[0].window")
    assert caught.value.path == "tiers.x.caps[0].window"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("15m", FixedWindow(15 * MINUTE)),
        ("2h30m", FixedWindow(150 * MINUTE)),
        (60, FixedWindow(MINUTE)),
        ("month", CalendarMonthWindow()),
        ({"month": None}, CalendarMonthWindow()),
        ({"month": {}}, CalendarMonthWindow()),
        ({"month": {"reset_day": 5}}, CalendarMonthWindow(5, "UTC")),
        ({"month": {"timezone": "Europe/Paris"}}, CalendarMonthWindow(1, "Europe/Paris")),
        ({"month": {"reset_day": 15, "timezone": NY}}, CalendarMonthWindow(15, NY)),
        ("month:reset=15:tz=America/New_York", CalendarMonthWindow(15, NY)),
    ],
)
def test_parse_window(value: object, expected: object) -> None:
    assert parse_window(value, "w") == expected


@pytest.mark.parametrize(
    "spec",
    [
        FixedWindow(1_500),
        FixedWindow(36 * HOUR),
        CalendarMonthWindow(),
        CalendarMonthWindow(31, NY),
    ],
)
def test_window_names_parse_back(spec: FixedWindow | CalendarMonthWindow) -> None:
    assert parse_window(spec.name, "w") == spec


@pytest.mark.parametrize(
    ("value", "path", "message"),
    [
        ({"month": {"reset_day": 0}}, "w.month.reset_day", "1 to 31"),
        ({"month": {"reset_day": 32}}, "w.month.reset_day", "1 to 31"),
        ({"month": {"reset_day": True}}, "w.month.reset_day", "1 to 31"),
        ({"month": {"reset_day": "5"}}, "w.month.reset_day", "1 to 31"),
        ({"month": {"timezone": "Mars/Olympus"}}, "w.month.timezone", "unknown IANA time zone"),
        ({"month": {"timezone": 5}}, "w.month.timezone", "IANA time zone"),
        ({"month": {"timezone": ""}}, "w.month.timezone", "IANA time zone"),
        ({"month": {"day": 5}}, "w.month", "unknown field 'day'"),
        ({"month": 5}, "w.month", "must be a mapping"),
        ({"week": 1}, "w", "unknown field 'week'"),
        ({}, "w", "needs the key 'month'"),
        ([1], "w", "must be a duration"),
        (None, "w", "must be a duration"),
        (1.5, "w", "must be a duration"),
        ("1w", "w", "invalid duration"),
        ("month:reset=32:tz=UTC", "w", "1 to 31"),
        ("month:reset=5:tz=Nowhere/City", "w", "unknown IANA time zone"),
    ],
)
def test_parse_window_errors(value: object, path: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as caught:
        parse_window(value, "w")
    assert caught.value.path == path


# --- formatting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1, "1970-01-01T00:00:00.001Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (1_646_092_800_000, "2022-03-01T00:00:00Z"),
        (1_646_092_800_123, "2022-03-01T00:00:00.123Z"),
        (ms("0999-01-02T03:04:05Z"), "0999-01-02T03:04:05Z"),
    ],
)
def test_format_ms(value: int, text: str) -> None:
    assert format_ms(value) == text


def test_window_label() -> None:
    window = CalendarMonthWindow().bucket(ms("2022-03-15T00:00:00Z"))
    assert window_label(window) == "2022-03-01T00:00:00Z/2022-04-01T00:00:00Z"
    assert window.contains(ms("2022-03-01"))
    assert not window.contains(ms("2022-04-01"))

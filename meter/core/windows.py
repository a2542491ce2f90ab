"""Time windows: fixed sizes aligned to the UTC epoch, and calendar months that reset on a
given day of month in an IANA time zone. `WindowSpec.bucket` runs per event per window.
"""

from __future__ import annotations

import functools
import re
from calendar import monthrange
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meter.core.durations import UNITS_MS, parse_duration
from meter.core.errors import PolicyError

__all__ = [
    "CalendarMonthWindow",
    "FixedWindow",
    "Window",
    "WindowSpec",
    "format_ms",
    "parse_duration_ms",
    "parse_window",
    "window_label",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_MONTH_NAME_RE = re.compile(r"month:reset=([0-9]{1,2}):tz=(.+)")
_MONTH_FIELDS = ("reset_day", "timezone")


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open interval of epoch milliseconds (UTC): `start_ms` <= t < `end_ms`."""

    start_ms: int
    end_ms: int

    def contains(self, ts_ms: int) -> bool:
        return self.start_ms <= ts_ms < self.end_ms


class WindowSpec(Protocol):
    """How time is cut into windows; `name` is canonical and stable (state keys, alert ids)."""

    @property
    def name(self) -> str: ...

    def bucket(self, ts_ms: int) -> Window: ...


def _fixed_name(size_ms: int) -> str:
    """The canonical name of a fixed size: its largest exact unit (`90s`, `2h`, `1500ms`)."""
    for unit, unit_ms in UNITS_MS:
        if size_ms % unit_ms == 0:
            return f"{size_ms // unit_ms}{unit}"
    raise AssertionError("unreachable: every size is a whole number of ms")


class _LastWindow:
    """The last window computed; a plain mutable box inside a frozen dataclass."""

    __slots__ = ("window",)

    def __init__(self) -> None:
        self.window: Window | None = None


@dataclass(frozen=True, slots=True)
class FixedWindow:
    """Windows of `size_ms` aligned to the UTC epoch: [ts - ts % size, +size)."""

    size_ms: int
    name: str = field(init=False, compare=False)
    _cache: _LastWindow = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.size_ms, bool) or not isinstance(self.size_ms, int):
            raise TypeError(f"size_ms must be an int, got {self.size_ms!r}")
        if self.size_ms <= 0:
            raise ValueError(f"size_ms must be positive, got {self.size_ms}")
        object.__setattr__(self, "name", _fixed_name(self.size_ms))
        object.__setattr__(self, "_cache", _LastWindow())

    def bucket(self, ts_ms: int) -> Window:
        # Reusing the last window skips building a frozen dataclass, the costly part here.
        cached = self._cache.window
        if cached is not None and cached.start_ms <= ts_ms < cached.end_ms:
            return cached
        # Python's % floors, so negative timestamps land in the window below them too.
        start = ts_ms - ts_ms % self.size_ms
        window = Window(start, start + self.size_ms)
        self._cache.window = window
        return window


@dataclass(frozen=True, slots=True)
class CalendarMonthWindow:
    """Months starting at local midnight on `reset_day` in `timezone`, clamped to short months."""

    reset_day: int = 1
    timezone: str = "UTC"
    name: str = field(init=False, compare=False)
    _tz: ZoneInfo = field(init=False, repr=False, compare=False)
    _cache: _LastWindow = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.reset_day, bool) or not isinstance(self.reset_day, int):
            raise TypeError(f"reset_day must be an int, got {self.reset_day!r}")
        if not 1 <= self.reset_day <= 31:
            raise ValueError(f"reset_day must be between 1 and 31, got {self.reset_day}")
        try:
            tz = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
            raise ValueError(f"unknown IANA time zone {self.timezone!r}") from exc
        if self.reset_day == 1 and self.timezone == "UTC":
            name = "month"
        else:
            name = f"month:reset={self.reset_day}:tz={self.timezone}"
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_tz", tz)
        object.__setattr__(self, "_cache", _LastWindow())

    def bucket(self, ts_ms: int) -> Window:
        cached = self._cache.window
        if cached is not None and cached.start_ms <= ts_ms < cached.end_ms:
            return cached
        window = self._compute(ts_ms)
        self._cache.window = window
        return window

    def _compute(self, ts_ms: int) -> Window:
        try:
            local = (_EPOCH + timedelta(milliseconds=ts_ms)).astimezone(self._tz)
            year, month = local.year, local.month
            start = self._start_of(year, month)
            if ts_ms >= start:
                return Window(start, self._start_of(*_shift(year, month, 1)))
            return Window(self._start_of(*_shift(year, month, -1)), start)
        except (OverflowError, ValueError) as exc:
            raise ValueError(f"timestamp {ts_ms} ms is outside the supported years 1-9999") from exc

    def _start_of(self, year: int, month: int) -> int:
        day = min(self.reset_day, monthrange(year, month)[1])
        # fold=0: a skipped midnight maps to the transition instant, a repeated one to its first.
        local_midnight = datetime(year, month, day, tzinfo=self._tz)
        return (local_midnight - _EPOCH) // _ONE_MS


def _shift(year: int, month: int, delta: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


@functools.lru_cache(maxsize=1 << 16)
def format_ms(ms: int) -> str:
    """RFC 3339 in UTC with 'Z'; milliseconds are shown only when non-zero. (Cached: a window's
    bounds are formatted in every record about it.)"""
    t = _EPOCH + timedelta(milliseconds=ms)
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    millis = ms % 1000
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def window_label(w: Window) -> str:
    """The window as an ISO 8601 interval of RFC 3339 UTC instants: 'start/end'."""
    return f"{format_ms(w.start_ms)}/{format_ms(w.end_ms)}"


def parse_duration_ms(value: object, path: str) -> int:
    """A positive duration from a policy value: with units (`meter.core.durations`), or an
    integer number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PolicyError(path, f"must be a duration like '15m' or whole seconds, got {value!r}")
    try:
        total = value * 1000 if isinstance(value, int) else parse_duration(value)
    except ValueError as exc:
        raise PolicyError(path, str(exc)) from None
    if total <= 0:
        raise PolicyError(path, f"duration must be positive, got {value!r}")
    return total


def parse_window(value: object, path: str) -> WindowSpec:
    """A window from a policy value: a duration, 'month', a month name, or {month: {...}}."""
    if isinstance(value, str):
        text = value.strip()
        if text == "month":
            return CalendarMonthWindow()
        named = _MONTH_NAME_RE.fullmatch(text)
        if named:
            return _month(int(named.group(1)), named.group(2), path, path)
        return FixedWindow(parse_duration_ms(value, path))
    if isinstance(value, Mapping):
        for key in value:
            if key != "month":
                raise PolicyError(path, f"unknown field {key!r} (allowed: month)")
        if not value:
            raise PolicyError(path, "a window mapping needs the key 'month'")
        return _parse_month_mapping(value["month"], f"{path}.month")
    if isinstance(value, int) and not isinstance(value, bool):
        return FixedWindow(parse_duration_ms(value, path))
    raise PolicyError(
        path,
        f"must be a duration like '15m', 'month', or {{month: {{reset_day, timezone}}}}, "
        f"got {value!r}",
    )


def _parse_month_mapping(body: object, path: str) -> CalendarMonthWindow:
    if body is None:
        return CalendarMonthWindow()
    if not isinstance(body, Mapping):
        raise PolicyError(path, f"must be a mapping with reset_day and timezone, got {body!r}")
    for key in body:
        if key not in _MONTH_FIELDS:
            raise PolicyError(path, f"unknown field {key!r} (allowed: {', '.join(_MONTH_FIELDS)})")
    reset_day = body.get("reset_day", 1)
    timezone = body.get("timezone", "UTC")
    return _month(reset_day, timezone, f"{path}.reset_day", f"{path}.timezone")


def _month(reset_day: object, timezone: object, day_path: str, tz_path: str) -> CalendarMonthWindow:
    if isinstance(reset_day, bool) or not isinstance(reset_day, int) or not 1 <= reset_day <= 31:
        raise PolicyError(day_path, f"reset day must be an integer from 1 to 31, got {reset_day!r}")
    if not isinstance(timezone, str) or not timezone:
        raise PolicyError(tz_path, f"must be an IANA time zone name, got {timezone!r}")
    try:
        return CalendarMonthWindow(reset_day, timezone)
    except ValueError as exc:
        raise PolicyError(tz_path, f"unknown IANA time zone {timezone!r}") from exc

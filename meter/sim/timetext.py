"""Fast RFC 3339 rendering of epoch milliseconds for generated events (one date per day cached)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from meter.core.durations import DAY_MS

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TimeText:
    """Renders epoch ms as ``YYYY-MM-DDTHH:MM:SS.mmmZ``; remembers the last day's date part."""

    __slots__ = ("_day", "_prefix")

    def __init__(self) -> None:
        self._day = -1
        self._prefix = ""

    def __call__(self, ms: int) -> str:
        day, rest = divmod(ms, DAY_MS)
        if day != self._day:
            self._day = day
            self._prefix = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")
        seconds, millis = divmod(rest, 1000)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        return f"{self._prefix}{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"

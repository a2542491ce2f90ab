"""Query buckets in a time zone, answered exactly from stored fixed windows: a bucket is the sum
of the stored windows that fit inside it, so the planner picks the largest stored size whose
windows never straddle a bucket boundary, or refuses the request (`QueryError`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meter.core.durations import format_duration

BUCKETS = ("15m", "1h", "1d", "month")
_NOMINAL_MS = {"15m": 900_000, "1h": 3_600_000, "1d": 86_400_000, "month": 86_400_000}
"""What a UTC bucket of each kind is a multiple of (a UTC month is whole UTC days)."""
MAX_SLOTS = 400_000
"""Stored windows a plan may walk through (a year of 15-minute windows is 35,040)."""
MAX_SEGMENTS = 5_000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class QueryError(ValueError):
    """A query parameter is invalid or cannot be answered exactly; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


@dataclass(frozen=True, slots=True)
class Segment:
    """Buckets of `length` ms, back to back from `start` to `end`."""

    start: int
    end: int
    length: int


@dataclass(frozen=True, slots=True)
class Plan:
    """How a query's buckets are summed: from stored windows of `source` (`source_ms` long)."""

    source: str
    source_ms: int
    segments: tuple[Segment, ...]

    def bucket_sql(self, column: str) -> str:
        """SQL for the start of the bucket holding a window starting at `column` (integer
        literals only: the segments are computed, never user text)."""
        arms = [
            f"WHEN {column} < {s.end} THEN {s.start} + (({column} - {s.start}) / {s.length}) "
            f"* {s.length}"
            for s in self.segments
        ]
        return f"CASE {' '.join(arms)} END"

    def bucket_end(self, bucket_start: int) -> int:
        for s in self.segments:
            if s.start <= bucket_start < s.end:
                return bucket_start + s.length
        raise KeyError(bucket_start)


def zone(tz: str) -> ZoneInfo:
    if len(tz) > 64:  # the longest IANA name has 32 characters; a path that long is an OSError
        raise QueryError("tz", f"unknown IANA time zone {tz[:64]!r}...")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise QueryError("tz", f"unknown IANA time zone {tz!r}") from None


def bucket_key(window: str | None, tz: ZoneInfo) -> Callable[[int], Hashable]:
    """The bucket label of an instant: its local month, date, hour or quarter hour (with the
    UTC offset, so a repeated hour at a DST change is a bucket of its own)."""
    if window is not None and window not in BUCKETS:
        raise QueryError("window", f"must be one of {', '.join(BUCKETS)}")

    def key(ms: int) -> Hashable:
        if window is None:
            return 0
        t = (_EPOCH + timedelta(milliseconds=ms)).astimezone(tz)
        if window == "month":
            return (t.year, t.month)
        if window == "1d":
            return t.date()
        minute = 0 if window == "1h" else t.minute - t.minute % 15
        return (t.replace(minute=minute, second=0, microsecond=0), t.utcoffset())

    return key


def _segments(
    key: Callable[[int], Hashable], size: int, from_ms: int, to_ms: int
) -> list[Segment] | None:
    """The buckets from `from_ms` to `to_ms` as segments, when every stored window of `size`
    lies inside one bucket; None when one straddles a boundary."""
    if from_ms % size or to_ms % size:
        return None
    bounds = [from_ms]
    t = from_ms
    current = key(t)
    while t < to_ms:
        if key(t + size - 1) != current:
            return None
        t += size
        if t < to_ms:
            nxt = key(t)
            if nxt != current:
                bounds.append(t)
                current = nxt
    bounds.append(to_ms)
    segments: list[Segment] = []
    for a, b in pairwise(bounds):
        last = segments[-1] if segments else None
        if last is not None and last.end == a and last.length == b - a:
            segments[-1] = Segment(last.start, b, last.length)
        else:
            segments.append(Segment(a, b, b - a))
    return segments


def plan_buckets(
    window: str | None, tz: str, from_ms: int, to_ms: int, sizes: Mapping[str, int]
) -> Plan | None:
    """The plan for buckets of `window` (None: the whole range as one bucket) in zone `tz`
    over [from_ms, to_ms), from the stored fixed window `sizes` (name -> ms). None when the
    store holds no fixed windows at all (there is nothing to sum)."""
    if to_ms <= from_ms:
        raise QueryError("to", "must be after from")
    zi = zone(tz)
    key = bucket_key(window, zi)
    if window is not None and key(from_ms - 1) == key(from_ms):
        raise QueryError("from", f"must start a {window} bucket in {tz} (a local boundary)")
    if window is not None and key(to_ms - 1) == key(to_ms):
        raise QueryError("to", f"must end a {window} bucket in {tz} (a local boundary)")
    if not sizes:
        return None
    for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
        if (to_ms - from_ms) // size > MAX_SLOTS:
            continue
        segments = _segments(key, size, from_ms, to_ms)
        if segments is not None:
            if len(segments) > MAX_SEGMENTS:
                raise QueryError("to", f"the range holds more than {MAX_SEGMENTS} bucket shapes")
            return Plan(name, size, tuple(segments))
    stored = ", ".join(n for n, _ in sorted(sizes.items(), key=lambda kv: kv[1]))
    smallest = min(sizes.values())
    if (to_ms - from_ms) // smallest > MAX_SLOTS:
        raise QueryError("to", f"the range is too long: over {MAX_SLOTS} stored windows")
    if window is None:
        end = "from" if all(from_ms % size for size in sizes.values()) else "to"
        raise QueryError(end, f"must fall on a stored window boundary (stored: {stored})")
    if any(_NOMINAL_MS[window] % size == 0 for size in sizes.values()):
        raise QueryError("tz", f"{window} buckets in {tz} do not align with any stored window "
                         f"({stored}): its UTC offsets need smaller windows")  # fmt: skip
    raise QueryError("window", f"{window} buckets do not align with any stored window "
                     f"({stored}); the finest stored is {format_duration(smallest)}")  # fmt: skip

"""The shape of simulated traffic in time: hourly volumes with a daily cycle (UTC working hours),
quieter weekends, day-to-day noise and growth, and bursts of one app's calls sized by its caps.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from meter.core.durations import DAY_MS, HOUR_MS

MINUTE_MS = 60_000

# Relative traffic per UTC hour: Europe's morning, then the US working day on top of it.
_CYCLE = (
    0.45, 0.38, 0.32, 0.28, 0.27, 0.30, 0.40, 0.55, 0.75, 0.90, 1.00, 1.05,
    1.10, 1.20, 1.35, 1.45, 1.45, 1.40, 1.30, 1.15, 0.95, 0.80, 0.65, 0.52,
)  # fmt: skip
_WEEKEND = 0.6
_GROWTH = 0.5  # traffic at the end of the span is 1.5 times the traffic at its start
_DAY_NOISE = 0.25  # sigma of the log-normal factor of each day


@dataclass(frozen=True, slots=True)
class Slot:
    """An hour (clipped to the span) and how many background calls fall into it."""

    start_ms: int
    end_ms: int
    count: int


def hourly_weights(rng: random.Random, start_ms: int, end_ms: int) -> list[tuple[int, int, float]]:
    """(start, end, weight) of each hour of [start_ms, end_ms), hours aligned to UTC."""
    out: list[tuple[int, int, float]] = []
    span = end_ms - start_ms
    day_factor: dict[int, float] = {}
    hour = start_ms - start_ms % HOUR_MS
    while hour < end_ms:
        lo, hi = max(hour, start_ms), min(hour + HOUR_MS, end_ms)
        day = hour // DAY_MS
        factor = day_factor.get(day)
        if factor is None:
            factor = rng.lognormvariate(0.0, _DAY_NOISE)
            if (day + 3) % 7 >= 5:  # 1970-01-01 was a Thursday: (day + 3) % 7 is 0 on Mondays
                factor *= _WEEKEND
            day_factor[day] = factor
        growth = 1.0 + _GROWTH * (lo - start_ms) / span
        weight = _CYCLE[(hour % DAY_MS) // HOUR_MS] * factor * growth * (hi - lo) / HOUR_MS
        out.append((lo, hi, weight))
        hour += HOUR_MS
    return out


def allocate(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` over `weights` proportionally, exactly (cumulative rounding)."""
    whole = sum(weights)
    if total <= 0 or whole <= 0:
        return [0] * len(weights)
    out: list[int] = []
    done = 0
    for cum in accumulate(weights):
        upto = round(total * cum / whole)
        out.append(upto - done)
        done = upto
    out[-1] += total - done
    return out


@dataclass(frozen=True, slots=True)
class BurstTarget:
    """A calls cap of an app that a burst aims at: `limit` calls per `window_ms`."""

    limit: int
    window_ms: int
    endpoint: str


@dataclass(frozen=True, slots=True)
class Burst:
    """`size` calls of source `source` spread evenly over [start_ms, end_ms)."""

    source: int
    start_ms: int
    end_ms: int
    size: int
    endpoint: str

    def count_before(self, ts_ms: int) -> int:
        """How many of the burst's calls fall before `ts_ms` (exact at both ends)."""
        t = min(max(ts_ms, self.start_ms), self.end_ms)
        return round(self.size * (t - self.start_ms) / (self.end_ms - self.start_ms))


def plan_bursts(
    rng: random.Random,
    budget: int,
    hours: Sequence[tuple[int, int, float]],
    app_weights: Sequence[float],
    targets: Sequence[Sequence[BurstTarget]],
    default_endpoints: Sequence[str],
) -> list[Burst]:
    """Bursts totalling `budget` calls, at busy times, mostly by busy apps, sorted by start.

    Each burst aims at one of its app's calls caps: 0.5 to 1.5 times the limit in 20-90% of the
    cap's window, so some bursts reach the warning level only and some cross the limit.
    """
    if budget <= 0 or not hours:
        return []
    cum_hours = list(accumulate(h[2] for h in hours))
    cum_apps = list(accumulate(app_weights))
    span_start, span_end = hours[0][0], hours[-1][1]
    bursts: list[Burst] = []
    remaining = budget
    while remaining > 0:
        source = bisect_right(cum_apps, rng.random() * cum_apps[-1])
        source = min(source, len(cum_apps) - 1)
        options = targets[source]
        if options:
            target = options[rng.randrange(len(options))]
            size = max(1, round(target.limit * rng.uniform(0.5, 1.5)))
            duration = max(1000, round(target.window_ms * rng.uniform(0.2, 0.9)))
            endpoint = target.endpoint
        else:
            size = rng.randint(50, 400)
            duration = rng.randint(2 * MINUTE_MS, 20 * MINUTE_MS)
            endpoint = default_endpoints[source]
        size = min(size, remaining)
        duration = min(duration, span_end - span_start)
        index = min(bisect_right(cum_hours, rng.random() * cum_hours[-1]), len(hours) - 1)
        lo, hi, _ = hours[index]
        start = min(rng.randrange(lo, hi), span_end - duration)
        bursts.append(Burst(source, start, start + duration, size, endpoint))
        remaining -= size
    bursts.sort(key=lambda b: (b.start_ms, b.source))
    return bursts

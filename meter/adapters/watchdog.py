"""The progress watchdog: notices a consumer that has records waiting (lag > 0) but does not move.

Each consumer of a process (the router, the counter, the store, the API's feed reader) reports
its position and lag every few seconds. A consumer whose position has not changed for
`stall_after` while its lag stayed above zero is **stalled**: `meter_stalled{consumer}` is 1, a
WARNING is logged once, and readiness (`/readyz`) names it. A consumer stalled for `exit_after`
while Kafka answered the whole time is beyond waiting: `overdue` names it and the process exits
with status 75 (`EXIT_STALLED`) for its supervisor to start it again (a restart rebuilds every
client and resumes from committed offsets; nothing is lost). Time while Kafka does not answer
counts towards `stall_after` (it is a stall, and worth showing) but not towards `exit_after`: a
restart would not bring Kafka back.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import NoReturn

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

EXIT_STALLED = 75
"""EX_TEMPFAIL: a consumer stopped making progress; a restart is the remedy."""
CHECK_INTERVAL_S = 5.0


@dataclass
class _Track:
    position: Hashable
    lag: int
    moved_s: float
    """When the position last changed (or the lag was 0)."""
    seen_s: float
    """When it was last observed."""
    blocked_s: float = 0.0
    """Seconds of the current stall while Kafka was unreachable."""
    warned: bool = False


@dataclass(frozen=True, slots=True)
class Stall:
    consumer: str
    seconds: float
    lag: int


class ProgressWatchdog:
    """Stalls of the consumers `observe` is told about (see the module doc)."""

    def __init__(
        self,
        stall_after_s: float,
        exit_after_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_after_s = stall_after_s
        self.exit_after_s = exit_after_s
        self.clock = clock
        self.tracks: dict[str, _Track] = {}

    def observe(
        self, consumer: str, position: Hashable, lag: int, *, kafka_up: bool = True
    ) -> None:
        """`position`: anything that changes when the consumer moves (e.g. its offsets)."""
        now = self.clock()
        track = self.tracks.get(consumer)
        if track is None or position != track.position or lag <= 0:
            if track is not None and track.warned:
                log.warning(
                    "%s moves again after %.0fs without progress", consumer, now - track.moved_s
                )
            self.tracks[consumer] = _Track(position, lag, now, now)
            return
        track.lag = lag
        if not kafka_up:
            track.blocked_s += now - track.seen_s
        track.seen_s = now
        stalled_s = now - track.moved_s
        if stalled_s >= self.stall_after_s and not track.warned:
            track.warned = True
            log.warning(
                "%s stalled: no progress for %.0fs with %d record(s) waiting; it exits after "
                "%.0fs of this while Kafka answers (its supervisor restarts it)",
                consumer, stalled_s, lag, self.exit_after_s,
            )  # fmt: skip

    def stalls(self) -> list[Stall]:
        now = self.clock()
        return [
            Stall(name, now - t.moved_s, t.lag)
            for name, t in sorted(self.tracks.items())
            if t.lag > 0 and now - t.moved_s >= self.stall_after_s
        ]

    def overdue(self) -> Stall | None:
        """A consumer stalled for `exit_after` while Kafka answered, if any."""
        now = self.clock()
        for name, t in sorted(self.tracks.items()):
            if t.lag > 0 and now - t.moved_s - t.blocked_s >= self.exit_after_s:
                return Stall(name, now - t.moved_s, t.lag)
        return None

    def problems(self) -> list[str]:
        """For readiness checks."""
        return [
            f"{s.consumer} stalled: no progress for {s.seconds:.0f}s with {s.lag} record(s) waiting"
            for s in self.stalls()
        ]


def exit_stalled(stall: Stall) -> NoReturn:
    """The documented policy for an overdue stall: exit at once with `EXIT_STALLED` (no clean
    stop: that could wait on the very client that stalled). Nothing committed is lost; what was
    not committed is processed again after the restart, and counted once."""
    log.critical(
        "%s made no progress for %.0fs with %d record(s) waiting while Kafka answered: exiting "
        "(status %d) for the supervisor to restart this process",
        stall.consumer, stall.seconds, stall.lag, EXIT_STALLED,
    )  # fmt: skip
    logging.shutdown()
    os._exit(EXIT_STALLED)


class WatchdogCollector(Collector):
    def __init__(self, watchdog: ProgressWatchdog) -> None:
        self.watchdog = watchdog

    def collect(self) -> Iterator[Metric]:
        stalled = GaugeMetricFamily(
            "meter_stalled",
            "1 while a consumer has records waiting and has not moved for the stall timeout",
            labels=["consumer"],
        )
        seconds = GaugeMetricFamily(
            "meter_stalled_seconds",
            "How long a consumer with records waiting has not moved (0 while it moves)",
            labels=["consumer"],
        )
        now = self.watchdog.clock()
        stalls = {s.consumer for s in self.watchdog.stalls()}
        for name, t in sorted(self.watchdog.tracks.items()):
            stalled.add_metric([name], 1.0 if name in stalls else 0.0)
            seconds.add_metric([name], now - t.moved_s if t.lag > 0 else 0.0)
        yield stalled
        yield seconds


__all__ = [
    "CHECK_INTERVAL_S",
    "EXIT_STALLED",
    "ProgressWatchdog",
    "Stall",
    "WatchdogCollector",
    "exit_stalled",
]

"""What a router knows of each input partition it reads: event-time progress, whether it is
caught up and idle, and which partitions run too far ahead during a catch-up.

- `wm`: the newest event time routed from the partition, each event counted at no later than
  when its record reached Kafka: a gateway whose clock runs ahead cannot push it forward.
- idle: caught up to the partition's end and no event routed for `idle_timeout` (wall clock).
  Idle partitions leave the watermark minimum (`meter.core.ledger.progress`), so a silent
  partition does not hold back everyone's windows.
- alignment (as Flink's watermark alignment): a partition with a backlog whose `wm` is more than
  `drift` ahead of the slowest partition with a backlog is paused until it is within half of
  that, so a backlog is read roughly in event-time order across partitions and windows close as
  it drains. A caught-up partition (live traffic) is never paused, and never holds a backlog
  back: it has nothing left to read in order (its events still hold the watermark, so reading
  ahead elsewhere makes none of them late). Otherwise a partition whose only gateway's clock
  runs an hour behind would hold every other partition's backlog for as long as it sends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from meter.adapters.wire import Report


@dataclass(slots=True)
class Source:
    wm: int | None = None
    last_event_s: float = 0.0
    """Monotonic clock of the last event routed from it (or of its assignment)."""
    caught_up: bool = False


@dataclass
class SourceTracker:
    idle_timeout_s: float
    drift_ms: int
    sources: dict[int, Source] = field(default_factory=dict)
    paused: set[int] = field(default_factory=set)

    def assigned(self, partitions: Iterable[int], now_s: float) -> None:
        """The router now reads `partitions`: new ones start with no progress (a restart or a
        move neither goes back nor skips ahead: the counters keep the maximum)."""
        keep = set(partitions)
        self.sources = {p: self.sources.get(p) or Source(last_event_s=now_s) for p in keep}

    def routed(self, partition: int, newest_ms: int, now_s: float) -> None:
        """Events from `partition` were routed (called after they were handed to the producer);
        `newest_ms` is the newest of their times, each no later than its record's arrival."""
        source = self.sources.get(partition)
        if source is None:
            return
        if source.wm is None or newest_ms > source.wm:
            source.wm = newest_ms
        source.last_event_s = now_s

    def positions(self, caught_up: dict[int, bool]) -> None:
        """Whether each partition is read to its end (position at the high watermark)."""
        for p, done in caught_up.items():
            source = self.sources.get(p)
            if source is not None:
                source.caught_up = done

    def idle(self, partition: int, now_s: float) -> bool:
        source = self.sources[partition]
        return source.caught_up and now_s - source.last_event_s >= self.idle_timeout_s

    def report(self, partitions: int, stamp_ms: int, now_s: float) -> Report:
        return Report(
            partitions,
            stamp_ms,
            {p: (s.wm, self.idle(p, now_s)) for p, s in sorted(self.sources.items())},
        )

    def ahead(self, now_s: float) -> tuple[set[int], set[int]]:
        """(partitions to pause, partitions to resume): see the module doc."""
        behind = {p: s.wm for p, s in self.sources.items() if s.wm is not None and not s.caught_up}
        if not behind:
            self.paused = set()
            return set(), set(self.sources)
        slowest = min(behind.values())
        pause = set()
        for p, wm in behind.items():
            # Hysteresis: a paused partition resumes only well within the drift, so a partition
            # is not paused and resumed at every poll (each resume fetches again).
            limit = self.drift_ms // 2 if p in self.paused else self.drift_ms
            if wm > slowest + limit:
                pause.add(p)
        self.paused = pause
        return pause, set(self.sources) - pause

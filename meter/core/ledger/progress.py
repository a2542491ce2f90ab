"""Event-time progress of one routed partition, from the routers' reports on every input partition.

Every router sends, to every routed partition, what it knows of each input partition it reads
(a *source*): the newest event time it has routed from it (`wm`, never ahead of when the event
reached Kafka), whether the source is idle (caught up to its end and without events for the idle
timeout), and the router's clock (`stamp`). A report follows the routed records it covers, so it
says "everything up to here from that source is in front of you".

Two watermarks follow, both monotonic:
- `event_wm`, event time every active source has reached: the minimum over the sources that are
  not idle. Whichever partition is read first, a backfill next to live traffic, or a gateway with
  a wrong clock cannot move it past the others. Windows expire on it.
- `close_wm`, when windows close: `event_wm`, or, when every source is idle, the routers' clock
  (the oldest stamp), so that windows close when traffic stops, a grace plus the idle timeout
  after their end, without waiting for the next call.

Until every input partition has reported once, nothing moves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SourceState = tuple[int | None, bool]
"""What a report says of one source: (newest event time routed or None, idle)."""


@dataclass(slots=True)
class Source:
    wm: int | None
    idle: bool
    stamp: int


class Progress:
    """Per-source state and the two watermarks of one routed partition (see the module doc)."""

    __slots__ = ("close_wm", "event_wm", "partitions", "sources")

    def __init__(self) -> None:
        self.sources: dict[int, Source] = {}
        self.partitions = 0
        """Input partitions known to exist (the largest count a report gave)."""
        self.event_wm: int | None = None
        self.close_wm: int | None = None

    def report(self, partitions: int, stamp: int, states: Mapping[int, SourceState]) -> bool:
        """Merge one router report; True when a watermark moved. Merging is monotonic and
        idempotent: a replayed or older report never moves anything back."""
        self.partitions = max(self.partitions, partitions)
        sources = self.sources
        for p, (wm, idle) in states.items():
            known = sources.get(p)
            if known is None:
                sources[p] = Source(wm, idle, stamp)
                continue
            if wm is not None and (known.wm is None or wm > known.wm):
                known.wm = wm
            if stamp >= known.stamp:
                known.idle, known.stamp = idle, stamp
        return self._recompute()

    def _recompute(self) -> bool:
        sources = [self.sources.get(p) for p in range(self.partitions)]
        if not sources or None in sources:
            return False  # a source never heard of: it may still hold anything
        known = [s for s in sources if s is not None]
        active = [s for s in known if not s.idle]
        if active:
            times = [s.wm for s in active]
            if None in times:
                return False  # an active source that has routed nothing yet holds everything
            event: int | None = min(t for t in times if t is not None)
            close = event
        else:
            clock = min(s.stamp for s in known)
            seen = [s.wm for s in known if s.wm is not None]
            # Nothing is pending anywhere: event time is as far as was seen, but never ahead of
            # the clock (an event a little ahead must not close windows that are still live).
            event = min(max(seen), clock) if seen else None
            close = clock
        new_event = _later(self.event_wm, event)
        new_close = _later(_later(self.close_wm, close), new_event)
        moved = (new_event, new_close) != (self.event_wm, self.close_wm)
        self.event_wm, self.close_wm = new_event, new_close
        return moved

    def encode(self) -> list[Any]:
        table = {str(p): [s.wm, int(s.idle), s.stamp] for p, s in self.sources.items()}
        return [self.partitions, self.event_wm, self.close_wm, table]

    @classmethod
    def decode(cls, value: list[Any]) -> Progress:
        progress = cls()
        progress.partitions, progress.event_wm, progress.close_wm = value[0], value[1], value[2]
        progress.sources = {
            int(p): Source(wm, bool(idle), stamp) for p, (wm, idle, stamp) in value[3].items()
        }
        return progress


def _later(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b

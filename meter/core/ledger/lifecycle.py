"""When a window closes, when it is compacted, and when it is forgotten.

A window's life, after its end:
- open until `close_wm` passes end + grace: then its totals are published (revision 0);
- closed, with every breakdown, until `event_wm` passes end + grace + late horizon: a late
  event re-publishes the whole window (revision 1, 2...);
- compact until `event_wm` passes that + history horizon: calls, records, per-cap usage, fired
  thresholds and revision are kept, the breakdowns are dropped; a late event still re-publishes
  the whole totals (base `expired`) and fires any threshold the whole total crosses;
- then forgotten. An event that old is dead-lettered (`too_late`): nothing could say any more
  whether it crosses a threshold again or which revision comes next.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Horizons:
    grace_ms: int
    late_ms: int
    history_ms: int

    def close_due(self, end_ms: int) -> int:
        return end_ms + self.grace_ms

    def compact_due(self, end_ms: int) -> int:
        return end_ms + self.grace_ms + self.late_ms

    def forget_due(self, end_ms: int) -> int:
        return end_ms + self.grace_ms + self.late_ms + self.history_ms


class Schedule:
    """Keys waiting for a watermark: to close (on `close_wm`), to compact or forget (on
    `event_wm`). An entry whose key changed meanwhile is looked at and dropped or re-queued by
    the ledger."""

    def __init__(self) -> None:
        self._closing: list[tuple[int, str]] = []
        self._expiring: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._closing) + len(self._expiring)

    def close_at(self, due_ms: int, key: str) -> None:
        heapq.heappush(self._closing, (due_ms, key))

    def expire_at(self, due_ms: int, key: str) -> None:
        heapq.heappush(self._expiring, (due_ms, key))

    def closing(self, close_wm: int | None) -> Iterator[str]:
        """Pops the keys due to close at `close_wm`."""
        heap = self._closing
        while close_wm is not None and heap and heap[0][0] <= close_wm:
            yield heapq.heappop(heap)[1]

    def expiring(self, event_wm: int | None) -> Iterator[str]:
        """Pops the keys due to compact or be forgotten at `event_wm`."""
        heap = self._expiring
        while event_wm is not None and heap and heap[0][0] <= event_wm:
            yield heapq.heappop(heap)[1]

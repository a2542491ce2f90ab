"""Telling faust's consumer which routed offsets are done although it never saw them acknowledged.

faust commits a partition up to the first offset it has not seen acknowledged (its `_acked` list
plus the `_gap` ranges it was told about), and forgets both at every rebalance. Records it skipped
(dropped from its buffers in a rebalance; the counter reads them back) and records an earlier
owner applied (a ledger bootstrapped ahead of faust's position skips them whole) are done but
never acknowledged here: the counter declares them as gaps, or faust's committed offset would
stay behind them for good.

Only offsets faust has *not* seen acknowledged may be declared. A gap over an acknowledged offset
puts that offset twice in faust's list, and its commit then moves one offset per commit: after a
broker outage a committed offset crept from 12 to 16 in 100 s while the counter applied every
record up to 425 (the pipeline looked stalled, and a restart would have replayed all of it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from faust.types import TP


def missing_ranges(start: int, end: int, seen: Iterable[int]) -> list[tuple[int, int]]:
    """The runs `(first, last)` of offsets in `[start, end]` that are not in `seen`."""
    out: list[tuple[int, int]] = []
    at = start
    for offset in sorted(o for o in set(seen) if start <= o <= end):
        if offset > at:
            out.append((at, offset - 1))
        at = offset + 1
    if at <= end:
        out.append((at, end))
    return out


class CommitGaps:
    """The counter's side of faust's offset bookkeeping for the routed topic (module doc)."""

    def __init__(self, consumer: Callable[[], Any], topic: str) -> None:
        self.consumer = consumer
        self.topic = topic

    async def done_before(self, partition: int, offset: int) -> list[tuple[int, int]]:
        """Every offset of `partition` before `offset` is applied: declare the ones faust has
        not seen acknowledged since its last commit; returns them."""
        consumer = self.consumer()
        add_gap = getattr(consumer, "_add_gap", None)
        if add_gap is None or offset <= 0:
            return []
        tp = TP(self.topic, partition)
        committed = getattr(consumer, "_committed_offset", {}).get(tp)
        seen = list(getattr(consumer, "_acked_index", {}).get(tp, ()))
        start = 0 if committed is None else committed + 1  # faust's own lower bound
        ranges = missing_ranges(start, offset - 1, seen)
        for first, last in ranges:
            await add_gap(tp, first, last)
        return ranges


__all__ = ["CommitGaps", "missing_ranges"]

"""The counter declares to faust only the routed offsets faust never saw acknowledged: a gap over
acknowledged offsets made faust's commit creep one offset per commit (the pipeline looked
stalled after a broker outage). Checked against faust's own commit bookkeeping."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

from meter.adapters.commit_gaps import CommitGaps, missing_ranges

TOPIC = "meter-routed"
TP0 = TP(TOPIC, 0)


class FaustBookkeeping:
    """The part of faust's `Consumer` that decides what to commit, run with its own code."""

    def __init__(self, committed: int | None) -> None:
        self._acked: defaultdict[TP, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[TP, set[int]] = defaultdict(set)
        self._gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._committed_offset[TP0] = committed

    def acked(self, *offsets: int) -> None:
        for o in offsets:
            self._acked[TP0].append(o)
            self._acked_index[TP0].add(o)

    async def _add_gap(self, tp: TP, first: int, last: int) -> None:
        await Consumer._add_gap(self, tp, first, last)  # type: ignore[arg-type]

    def commit(self) -> int | None:
        """One commit: the offset faust commits now (None: nothing to commit)."""
        new: Any = Consumer._new_offset(self, TP0)  # type: ignore[arg-type]
        if new is not None:
            self._committed_offset[TP0] = new
        return new  # type: ignore[no-any-return]


def test_missing_ranges() -> None:
    assert missing_ranges(0, 9, []) == [(0, 9)]
    assert missing_ranges(0, 9, range(10)) == []
    assert missing_ranges(5, 9, [1, 5, 6, 8, 12]) == [(7, 7), (9, 9)]
    assert missing_ranges(3, 2, []) == []


def test_declaring_acknowledged_offsets_as_a_gap_makes_faust_creep() -> None:
    """What the counter did before: it is why the routed offsets stalled."""
    faust = FaustBookkeeping(committed=12)
    faust.acked(*range(13, 101))
    asyncio.run(faust._add_gap(TP0, 0, 100))
    assert [faust.commit() for _ in range(4)] == [14, 15, 16, 17]


def test_only_offsets_faust_never_saw_done_are_declared_and_it_commits_at_once() -> None:
    faust = FaustBookkeeping(committed=12)
    faust.acked(*range(13, 40), *range(60, 101))  # 40..59: skipped by faust, read back
    gaps = CommitGaps(lambda: faust, TOPIC)
    assert asyncio.run(gaps.done_before(0, 101)) == [(40, 59)]
    assert faust.commit() == 101
    assert faust.commit() is None


def test_a_ledger_ahead_of_faust_declares_everything_below_the_first_record() -> None:
    faust = FaustBookkeeping(committed=None)
    gaps = CommitGaps(lambda: faust, TOPIC)
    assert asyncio.run(gaps.done_before(0, 250)) == [(0, 249)]
    faust.acked(250)
    assert faust.commit() == 251


def test_nothing_is_declared_while_faust_saw_everything() -> None:
    faust = FaustBookkeeping(committed=5)
    faust.acked(*range(6, 30))
    gaps = CommitGaps(lambda: faust, TOPIC)
    assert asyncio.run(gaps.done_before(0, 30)) == []
    assert not faust._gap[TP0]
    assert faust.commit() == 30

"""Committing the routed topic's offsets from what the ledgers hold, not from faust's acks.

Each routed partition's ledger records the last routed offset it applied, and that record reaches
the changelog with the state it describes. So the offset to resume from is known exactly: the
ledger's next offset, once the changelog records queued so far are acknowledged by Kafka. The
worker commits that every `COMMIT_INTERVAL_S`, when a rebalance takes partitions away, and at a
clean stop.

faust's own commits for the routed topic are turned off (the topic is declared with `acks=False`).
They came from its acknowledgement bookkeeping, which the counter could only patch from outside:
faust commits a partition up to the first offset it has not seen acknowledged, forgets what it saw
at every rebalance and restart, and refuses to commit at all while the lowest offset it saw
acknowledged is more than one past its committed offset. The counter had to declare the offsets
it applied without faust seeing them (records read back after faust skipped them, replays a
restored ledger skipped whole) as "gaps", and in CI the committed offsets of two routed partitions
stayed at 1 through three worker runs while the counter went on applying their records: the
pipeline looked stalled, and any restart would have replayed everything.

A committed offset here is only where a new owner starts reading: the ledger skips records it
already applied and reads back records it missed (`meter.adapters.counter`), so an offset that is
behind costs replay and one that is ahead costs a read, never a count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from faust.types import TP

from meter.adapters.changelog import ChangelogTracker

COMMIT_INTERVAL_S = 1.0
"""How often the applied offsets are committed (a restart replays at most about this much, and
the replay is skipped whole by the ledgers)."""


class RoutedOffsets:
    """Commits what the ledgers applied (partition -> next routed offset to read) for the routed
    topic, through faust's consumer."""

    def __init__(
        self,
        consumer: Callable[[], Any],
        topic: str,
        tracker: Callable[[], ChangelogTracker],
    ) -> None:
        self.consumer = consumer
        self.topic = topic
        self.tracker = tracker
        self.committed: dict[int, int] = {}
        """The offsets this worker committed, per partition (forgotten when one is revoked)."""

    async def commit(self, applied: Mapping[int, int]) -> dict[int, int]:
        """Commit the offsets in `applied` that are ahead of what this worker committed, once
        every changelog record queued until now is acknowledged; returns what was committed.

        `applied` must be read with no await between it and this call: the changelog records
        of what it covers are then among those waited for."""
        todo = {p: o for p, o in applied.items() if o > self.committed.get(p, -1)}
        if not todo:
            return {}
        await self.tracker().wait_queued()
        consumer = self.consumer()
        assigned = consumer.assignment()
        offsets = {TP(self.topic, p): o for p, o in todo.items() if TP(self.topic, p) in assigned}
        if not offsets:
            return {}
        # faust's delegate commits in its consumer thread, for partitions still assigned, and
        # returns False when the group rebalanced meanwhile (the next owner commits then).
        if not await consumer._commit(offsets):
            return {}
        done = {tp.partition: o for tp, o in offsets.items()}
        self.committed.update(done)
        return done

    def forget(self, partitions: list[int]) -> None:
        """Partitions that left: another worker commits them now; on return, start afresh."""
        for p in partitions:
            self.committed.pop(p, None)


__all__ = ["COMMIT_INTERVAL_S", "RoutedOffsets"]

"""Deduplication of repeated event ids (gateway retries, records a router sent again).

An id is remembered by ingest time (when its record reached Kafka), not event time: a retry or a
re-sent record arrives soon after the original however old the call's event time is, so a late
call is recognised as well as a current one. Ids live in one-minute ingest-time buckets and are
forgotten a whole bucket at a time once the partition's ingest time is `horizon` past it.

The key of an id is `<app>|<id>`, or `<app>|<id>|<level>` for the halves of an unknown app's
event that count at one subject level only (`meter.core.ledger.tally`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meter.core.events import ApiCall
from meter.core.ledger.cache import WriteBackCache
from meter.core.ledger.records import IdBlock

BUCKET_MS = 60_000
IDS_PER_BLOCK = 1000
"""Ids are at most ~260 bytes: a block stays far below Kafka's record size limit."""


@dataclass(slots=True)
class Admitted:
    """The events of one record that count here, in order, with their subject levels."""

    events: list[ApiCall]
    levels: list[str | None]
    fresh: set[int]
    """`id()` of the events counted for the first time (not a replay of this same record)."""
    duplicates: int


class IdMemory:
    """The ids one partition remembers, and which of them still have to be stored."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.ids: dict[str, int] = {}  # key -> the routed offset of the record that counted it
        self._unsaved: dict[int, dict[str, int]] = {}  # bucket -> ids not yet in a block
        self._by_bucket: dict[int, list[str]] = {}
        self._blocks: dict[int, list[str]] = {}  # bucket -> state keys of its blocks

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, key: str, block: IdBlock) -> None:
        """Remember a stored block (bootstrap)."""
        self.ids.update(block.ids)
        self._by_bucket.setdefault(block.bucket, []).extend(block.ids)
        self._blocks.setdefault(block.bucket, []).append(key)

    def admit(
        self,
        events: Sequence[ApiCall],
        levels: Sequence[str | None] | None,
        offset: int,
        ingest_ms: int,
    ) -> Admitted:
        """The events of the record at `offset` that are not repeats. Re-applying the same record
        admits the same events again (they carry its offset), but none of them as fresh."""
        ids = self.ids
        bucket = ingest_ms // BUCKET_MS
        unsaved = self._unsaved.setdefault(bucket, {})
        in_bucket = self._by_bucket.setdefault(bucket, [])
        seen_here: set[str] = set()
        out = Admitted([], [], set(), 0)
        for i, ev in enumerate(events):
            level = levels[i] if levels else None
            key = f"{ev.app_id}|{ev.id}" if level is None else f"{ev.app_id}|{ev.id}|{level}"
            if key in seen_here:
                out.duplicates += level != "org"  # an event's org half is not a second repeat
                continue
            seen_here.add(key)
            known = ids.get(key)
            if known is None:
                out.fresh.add(id(ev))
                ids[key] = offset
                unsaved[key] = offset
                in_bucket.append(key)
            elif known != offset:  # counted by another record: a retry or a re-sent event
                out.duplicates += level != "org"
                continue
            out.events.append(ev)
            out.levels.append(level)
        return out

    def save(self, state: WriteBackCache, last_offset: int | None) -> None:
        """Put the ids admitted since the last save into blocks (one flush)."""
        for bucket, ids in self._unsaved.items():
            items = list(ids.items())
            for n, i in enumerate(range(0, len(items), IDS_PER_BLOCK)):
                key = f"d|{self.partition}|{bucket}|{last_offset}" + (f"|{n}" if n else "")
                state.put(key, IdBlock(self.partition, bucket, dict(items[i : i + IDS_PER_BLOCK])))
                self._blocks.setdefault(bucket, []).append(key)
        self._unsaved = {}

    def forget(self, horizon_ms: int, state: WriteBackCache) -> None:
        """Drop the ids of ingest-time buckets that ended before `horizon_ms`."""
        for bucket in [b for b in self._by_bucket if (b + 1) * BUCKET_MS <= horizon_ms]:
            for key in self._by_bucket.pop(bucket):
                self.ids.pop(key, None)
            self._unsaved.pop(bucket, None)
            for block in self._blocks.pop(bucket, ()):
                state.delete(block)

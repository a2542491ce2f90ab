"""Deduplication of repeated event ids (gateway retries, records a router sent again).

An id is remembered by ingest time (when its record reached Kafka), not event time: a retry or a
re-sent record arrives soon after the original however old the call's event time is, so a late
call is recognised as well as a current one. Ids live in one-minute ingest-time buckets and are
forgotten a whole bucket at a time once the partition's ingest time is `horizon` past it.

The key of an id is `<app>|<id>`, or `<app>|<id>|<level>` for the halves of an unknown app's
event that count at one subject level only (`meter.core.ledger.tally`).

Memory. A partition remembers every id of the last hour (`--dedup-horizon`): at 10,000 events a
second that is 36 million ids, so each costs as little as it can. An id is kept as the 128-bit
BLAKE2b digest of its key (two distinct keys share one with odds of about n^2 / 2^129: nil at
any rate a partition sees), in sorted numpy columns (digest, routed offset, bucket, epoch): 40
bytes an id instead of a string key in a dict (about 140). The ids admitted since the last flush
sit in small dicts; each flush turns them into one sorted run, and runs of similar size are
merged, so a lookup is a binary search in a handful of runs. Forgetting is exact but lazy: an id
whose bucket has been forgotten is ignored when looked up and dropped at the next merge of its
run (`_valid`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from meter.core.events import ApiCall
from meter.core.ledger.cache import WriteBackCache
from meter.core.ledger.records import IdBlock, digest

BUCKET_MS = 60_000
IDS_PER_BLOCK = 4000
"""Stored as 16-byte digests (base64): a block of 4,000 is about 90 KB, far below Kafka's record
size limit."""
MERGE_RATIO = 4
"""A new run is merged into the one before it until that one is this many times larger."""

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]


def id_key(ev: ApiCall, level: str | None) -> str:
    return f"{ev.app_id}|{ev.id}" if level is None else f"{ev.app_id}|{ev.id}|{level}"


@dataclass(slots=True)
class _Run:
    """Remembered ids sorted by the first half of their digest."""

    hi: U64
    lo: U64
    offset: I64
    bucket: I64
    epoch: I64
    """The number of `forget` calls before the id was admitted (see `IdMemory._valid`)."""
    sizes: dict[int, int] = field(init=False)
    """Ids per bucket."""

    def __post_init__(self) -> None:
        buckets, counts = np.unique(self.bucket, return_counts=True)
        self.sizes = dict(zip(buckets.tolist(), counts.tolist(), strict=True))

    def __len__(self) -> int:
        return len(self.hi)

    def where(self, keep: npt.NDArray[np.bool_]) -> _Run:
        return _Run(self.hi[keep], self.lo[keep], self.offset[keep], self.bucket[keep],
                    self.epoch[keep])  # fmt: skip


def _halves(digests: Sequence[bytes]) -> tuple[U64, U64]:
    both = np.frombuffer(b"".join(digests), dtype="<u8").reshape(-1, 2)
    return both[:, 0].copy(), both[:, 1].copy()


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
        self._runs: list[_Run] = []
        """Oldest and largest first."""
        self._recent: dict[int, dict[bytes, int]] = {}
        """bucket -> ids admitted since the last save (digest -> offset): not yet in a block."""
        self._blocks: dict[int, list[str]] = {}  # bucket -> state keys of its blocks
        self._counts: dict[int, int] = {}  # bucket -> ids remembered in it
        self._epoch = 0
        self._floor: int | None = None
        """Buckets below this were forgotten at the last `forget` (None: nothing yet)."""

    def __len__(self) -> int:
        return sum(self._counts.values())

    def __contains__(self, key: str) -> bool:
        return self._known([digest(key)])[0] is not None

    def load(self, key: str, block: IdBlock) -> None:
        """Remember a stored block (bootstrap)."""
        pairs = list(block.pairs())
        digests = [key for key, _ in pairs]
        self._add_run(digests, (offset for _, offset in pairs), [block.bucket] * len(digests))
        self._blocks.setdefault(block.bucket, []).append(key)
        self._counts[block.bucket] = self._counts.get(block.bucket, 0) + len(digests)

    def admit(
        self,
        events: Sequence[ApiCall],
        levels: Sequence[str | None] | None,
        offset: int,
        ingest_ms: int,
    ) -> Admitted:
        """The events of the record at `offset` that are not repeats. Re-applying the same record
        admits the same events again (they carry its offset), but none of them as fresh."""
        bucket = ingest_ms // BUCKET_MS
        at = levels if levels else [None] * len(events)
        keys = [digest(id_key(ev, level)) for ev, level in zip(events, at, strict=True)]
        known = self._known(keys)
        recent = self._recent.setdefault(bucket, {})
        seen_here: set[bytes] = set()
        out = Admitted([], [], set(), 0)
        added = 0
        for ev, level, key, was in zip(events, at, keys, known, strict=True):
            if key in seen_here:
                out.duplicates += level != "org"  # an event's org half is not a second repeat
                continue
            seen_here.add(key)
            if was is None:
                out.fresh.add(id(ev))
                recent[key] = offset
                added += 1
            elif was != offset:  # counted by another record: a retry or a re-sent event
                out.duplicates += level != "org"
                continue
            out.events.append(ev)
            out.levels.append(level)
        if added:
            self._counts[bucket] = self._counts.get(bucket, 0) + added
        return out

    def save(self, state: WriteBackCache, last_offset: int | None) -> None:
        """Put the ids admitted since the last save into blocks (one flush)."""
        digests: list[bytes] = []
        offsets: list[int] = []
        buckets: list[int] = []
        for bucket, ids in self._recent.items():
            items = list(ids.items())
            for n, i in enumerate(range(0, len(items), IDS_PER_BLOCK)):
                key = f"d|{self.partition}|{bucket}|{last_offset}" + (f"|{n}" if n else "")
                state.put(key, IdBlock.of(self.partition, bucket, items[i : i + IDS_PER_BLOCK]))
                self._blocks.setdefault(bucket, []).append(key)
            digests += ids
            offsets += ids.values()
            buckets += [bucket] * len(ids)
        self._recent = {}
        self._add_run(digests, offsets, buckets)

    def forget(self, horizon_ms: int, state: WriteBackCache) -> None:
        """Drop the ids of ingest-time buckets that ended before `horizon_ms`."""
        floor = horizon_ms // BUCKET_MS
        self._epoch += 1
        advanced = self._floor is None or floor > self._floor
        self._floor = floor if self._floor is None else max(self._floor, floor)
        for bucket in [b for b in self._counts if b < floor]:
            del self._counts[bucket]
            self._recent.pop(bucket, None)
            for block in self._blocks.pop(bucket, ()):
                state.delete(block)
        if advanced:
            # Every id stored so far is now valid only if its bucket is kept (its epoch is
            # older): a run mostly forgotten is filtered now rather than at its next merge, which
            # may never come if the traffic drops (its memory would stay).
            floor = self._floor
            runs = []
            for run in self._runs:
                forgotten = sum(n for b, n in run.sizes.items() if b < floor)
                kept = run.where(run.bucket >= floor) if 2 * forgotten > len(run) else run
                if len(kept):
                    runs.append(kept)
            self._runs = runs

    # -- the runs ------------------------------------------------------------------------------
    def _known(self, keys: Sequence[bytes]) -> list[int | None]:
        """For each digest: the offset of the record that counted it, if it is remembered."""
        out: list[int | None] = [None] * len(keys)
        if not keys:
            return out
        recent = self._recent
        if recent:
            for i, key in enumerate(keys):
                for ids in recent.values():
                    offset = ids.get(key)
                    if offset is not None:
                        out[i] = offset
                        break
        if not self._runs:
            return out
        hi, lo = _halves(keys)
        for run in self._runs:
            left = np.searchsorted(run.hi, hi, "left")
            right = np.searchsorted(run.hi, hi, "right")
            for i in np.flatnonzero(right > left).tolist():
                for j in range(int(left[i]), int(right[i])):
                    if run.lo[j] == lo[i] and self._valid(int(run.bucket[j]), int(run.epoch[j])):
                        out[i] = int(run.offset[j])
        return out

    def _valid(self, bucket: int, epoch: int) -> bool:
        """Not forgotten: admitted since the last `forget`, or in a bucket it kept. (An id
        admitted into a bucket already past the horizon, from a record with an older ingest
        time, is remembered until the next `forget`, as it always was.)"""
        return epoch == self._epoch or self._floor is None or bucket >= self._floor

    def _add_run(self, digests: list[bytes], offsets: Iterable[int], buckets: list[int]) -> None:
        if not digests:
            return
        hi, lo = _halves(digests)
        order = np.argsort(hi, kind="stable")
        run = _Run(
            hi[order],
            lo[order],
            np.fromiter(offsets, dtype=np.int64, count=len(digests))[order],
            np.asarray(buckets, dtype=np.int64)[order],
            np.full(len(digests), self._epoch, dtype=np.int64),
        )
        runs = self._runs
        runs.append(run)
        while len(runs) > 1 and len(runs[-2]) < MERGE_RATIO * len(runs[-1]):
            newer = runs.pop()
            runs[-1] = self._merge(runs[-1], newer)

    def _merge(self, a: _Run, b: _Run) -> _Run:
        """One run of the ids of `a` and `b` still remembered."""
        hi = np.concatenate([a.hi, b.hi])
        bucket = np.concatenate([a.bucket, b.bucket])
        epoch = np.concatenate([a.epoch, b.epoch])
        if self._floor is None:
            keep = np.ones(len(hi), dtype=bool)
        else:
            keep = (epoch == self._epoch) | (bucket >= self._floor)
        hi = hi[keep]
        order = np.argsort(hi, kind="stable")
        return _Run(
            hi[order],
            np.concatenate([a.lo, b.lo])[keep][order],
            np.concatenate([a.offset, b.offset])[keep][order],
            bucket[keep][order],
            epoch[keep][order],
        )

    def stored(self) -> int:
        """Ids held in the runs, forgotten ones not yet dropped included (for tests)."""
        return sum(len(run) for run in self._runs)

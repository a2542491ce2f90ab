"""The ledger's state records, as typed values, and their compact encoding (JSON-able lists).

Keys of one routed partition's state:
- `s|<subject type>|<subject>|<window>|<start ms>`: a `WindowSlot`, one subject's totals in one
  window;
- `m|<kind>|<subject type>|<subject>|<details>|<day ms>`: a `DayMarker`, an alert raised once per
  subject and UTC day (unknown app, restricted use);
- `d|<partition>|<bucket>|<offset>[|n]`: an `IdBlock`, event ids remembered for deduplication
  (digests of their keys);
- `w|<partition>`: the `PartitionMeta`, written last in every flush.

Each record that produces outputs keeps them in its `outbox` until Kafka has them (`meter.core.
ledger.outbox`).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from meter.core.ledger.progress import Progress
from meter.core.outputs import Outbound
from meter.core.policy import Cap

Encoded = list[Any]
Cells = dict[str, list[int]]
"""A breakdown: name -> [calls, records]."""

OPEN = -1
"""`WindowSlot.rev` of a window that has not closed yet."""


@dataclass(slots=True)
class WindowSlot:
    """One subject's usage in one window, from its first event until the history horizon."""

    partition: int
    offset: int
    """The highest routed offset folded in: a replayed record at or below it is skipped here."""
    subject_type: str
    subject: str
    org: str | None
    window: str
    start_ms: int
    end_ms: int
    calls: int = 0
    records: int = 0
    endpoints: Cells = field(default_factory=dict)
    recipients: Cells = field(default_factory=dict)
    capped: Cells = field(default_factory=dict)
    """Usage of the caps that count only some events (endpoint or status filters): key -> cells."""
    fired: list[str] = field(default_factory=list)
    """Thresholds crossed so far, as `<cap key>@<ratio>`."""
    rev: int = OPEN
    """The revision last published; OPEN before the window closed."""
    late: int = 0
    compact: bool = False
    """Past the late horizon: `endpoints` and `recipients` hold only what came since then."""
    outbox: list[Outbound] = field(default_factory=list)

    @property
    def closed(self) -> bool:
        return self.rev != OPEN

    def used(self, cap: Cap) -> int:
        """This window's usage of `cap`: its metric, over the events the cap counts."""
        counts = self.capped.get(cap.key, (0, 0)) if cap.filtered else (self.calls, self.records)
        return counts[0] if cap.metric == "calls" else counts[1]

    def encode(self) -> Encoded:
        # The subject type, subject, window and start are the key's (`s|<type>|<subject>|
        # <window>|<start>`), and trailing fields at their defaults are left out.
        v: Encoded = [
            "t", self.partition, self.offset, self.org, self.end_ms, self.calls, self.records,
            self.endpoints, self.recipients, self.capped, self.fired, self.rev, self.late,
            int(self.compact), _outbox(self.outbox),
        ]  # fmt: skip
        n = len(v)
        while n > _SLOT_FIXED and v[n - 1] == _SLOT_DEFAULTS[n - 1 - _SLOT_FIXED]:
            n -= 1
        return v[:n]

    @classmethod
    def decode(cls, key: str, v: Encoded) -> WindowSlot:
        if v[0] == "s":  # written before 2026-12-02, with the key's fields
            return cls(
                v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12],
                v[13], v[14], v[15], v[16], bool(v[17]), _outbound(v[18]),
            )  # fmt: skip
        parts = key.split("|")
        if len(v) < len(_SLOT_DEFAULTS) + _SLOT_FIXED:
            v = [*v, *_slot_defaults()[len(v) - _SLOT_FIXED :]]
        return cls(
            v[1], v[2], parts[1], "|".join(parts[2:-2]), v[3], parts[-2], int(parts[-1]), v[4],
            v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], bool(v[13]), _outbound(v[14]),
        )  # fmt: skip


_SLOT_FIXED = 7
"""Fields of an encoded `WindowSlot` always written: kind, partition, offset, org, end, calls,
records."""


def _slot_defaults() -> Encoded:
    """Defaults of the fields after them (new objects: a decoded window may change them)."""
    return [{}, {}, {}, [], OPEN, 0, 0, []]


_SLOT_DEFAULTS = _slot_defaults()
"""The same, for comparison only."""


@dataclass(slots=True)
class DayMarker:
    """A once-per-day alert that fired, remembered until the history horizon passes its day; or
    (`count`) how many of a day's unknown-app alerts a partition has raised."""

    partition: int
    day_ms: int
    outbox: list[Outbound] = field(default_factory=list)
    count: int = 0

    def encode(self) -> Encoded:
        head = ["m", self.partition, self.day_ms, _outbox(self.outbox)]
        return [*head, self.count] if self.count else head

    @classmethod
    def decode(cls, v: Encoded) -> DayMarker:
        return cls(v[1], v[2], _outbound(v[3]), v[4] if len(v) > 4 else 0)


def digest(key: str) -> bytes:
    """What the ledger remembers of an event id's key (`meter.core.ledger.dedup`)."""
    return hashlib.blake2b(key.encode(), digest_size=16).digest()


@dataclass(slots=True)
class IdBlock:
    """Event ids first counted in one flush, in one ingest-time bucket: the 16-byte digests of
    their keys, grouped by the routed offset of the record that counted them (offset, the
    digests one after another)."""

    partition: int
    bucket: int
    entries: list[tuple[int, bytes]]

    @classmethod
    def of(cls, partition: int, bucket: int, ids: Iterable[tuple[bytes, int]]) -> IdBlock:
        """A block of (digest, offset) pairs."""
        by_offset: dict[int, list[bytes]] = {}
        for key, offset in ids:
            by_offset.setdefault(offset, []).append(key)
        return cls(partition, bucket, [(o, b"".join(keys)) for o, keys in by_offset.items()])

    def pairs(self) -> Iterator[tuple[bytes, int]]:
        """(digest, offset) of every id in the block."""
        for offset, packed in self.entries:
            for i in range(0, len(packed), 16):
                yield packed[i : i + 16], offset

    def digests(self) -> list[bytes]:
        return [key for key, _ in self.pairs()]

    def encode(self) -> Encoded:
        entries = [[o, base64.b64encode(p).decode()] for o, p in self.entries]
        return ["d", self.partition, self.bucket, entries]

    @classmethod
    def decode(cls, v: Encoded) -> IdBlock:
        if isinstance(v[3], dict):  # written before 2026-12-02: {key: offset}
            return cls.of(v[1], v[2], ((digest(k), o) for k, o in v[3].items()))
        return cls(v[1], v[2], [(o, base64.b64decode(p)) for o, p in v[3]])


@dataclass(slots=True)
class PartitionMeta:
    """Where the partition stands: offsets, ingest time, event-time progress, and the outbox of
    records that belong to no window (dead letters of events past the history horizon)."""

    partition: int
    last_offset: int | None = None
    ingest_ms: int | None = None
    progress: Progress = field(default_factory=Progress)
    outbox: list[Outbound] = field(default_factory=list)
    quota_keys: set[str] = field(default_factory=set)
    """Keys this partition has written to the quota feed (a cap that leaves the policy gets a
    tombstone)."""

    def encode(self) -> Encoded:
        return [
            "w", self.partition, self.last_offset, self.ingest_ms, self.progress.encode(),
            _outbox(self.outbox), sorted(self.quota_keys),
        ]  # fmt: skip

    @classmethod
    def decode(cls, v: Encoded) -> PartitionMeta:
        keys = set(v[6]) if len(v) > 6 else set()
        return cls(v[1], v[2], v[3], Progress.decode(v[4]), _outbound(v[5]), keys)


Record = WindowSlot | DayMarker | IdBlock | PartitionMeta


def decode(key: str, value: Encoded) -> Record:
    kind = value[0]
    if kind in {"t", "s"}:
        return WindowSlot.decode(key, value)
    if kind == "d":
        return IdBlock.decode(value)
    if kind == "m":
        return DayMarker.decode(value)
    return PartitionMeta.decode(value)


def _outbox(records: list[Outbound]) -> list[Any]:
    return [r.to_json() for r in records]


def _outbound(items: list[Any]) -> list[Outbound]:
    return [Outbound.from_json(i) for i in items]

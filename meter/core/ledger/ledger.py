"""The usage ledger of one routed partition: exact counts per subject and window, alerts, window
close on event-time progress, late amendments, and the end of old state.

Exactness under replay: every slot carries `offset`, the highest routed offset folded into it.
All the events of one subject arrive on one partition in offset order, so a record whose offset
is not above a slot's has already been applied to it and is skipped there. The meta key records
the last offset whose writes are all stored; it is written last in every flush, so a replay of a
record up to it is skipped whole, even where its slots have been forgotten since.

State is cached in memory and written back by `flush()`: the adapter flushes before it publishes
the outbox and before it lets the source offsets be committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from meter.core.durations import DAY_MS
from meter.core.events import ApiCall
from meter.core.ledger.cache import Store, WriteBackCache
from meter.core.ledger.dedup import IdMemory
from meter.core.ledger.lifecycle import Horizons, Schedule
from meter.core.ledger.outbox import Pending, too_late, window_record
from meter.core.ledger.progress import SourceState
from meter.core.ledger.quota import QuotaFeed, quota_record, stale_keys, tombstone
from meter.core.ledger.records import DayMarker, IdBlock, PartitionMeta, WindowSlot, decode
from meter.core.ledger.tally import Context, Stats, Tally
from meter.core.outputs import QUOTA
from meter.core.policy import Cap, Policy

_RETRY_MS = 60_000
"""A record whose outbox is not yet published is looked at again this much event time later."""


@dataclass(frozen=True)
class LedgerSettings:
    grace_ms: int = 60_000
    """Event-time delay after a window's end before it closes (late events after that amend it)."""
    dedup_horizon_ms: int = 3_600_000
    """How long an event id is remembered for deduplication, in ingest time."""
    late_horizon_ms: int = DAY_MS
    """How long a closed window keeps its breakdowns, so late events amend every figure."""
    history_horizon_ms: int = 35 * DAY_MS
    """How long after that its compact totals are kept; events older are dead-lettered."""
    max_endpoints: int = 200
    """Per-endpoint breakdown entries per window; further endpoints fold into "(other)"."""
    max_recipients: int = 50
    """Per-recipient entries per window (restricted-use recipients always have their own)."""
    unknown_app_alerts: int = 100
    """`unknown_app` alerts per partition per UTC day; past them, one `unknown_app_flood`."""
    max_unknown_apps: int = 10_000
    """Unknown apps counted under their own id per partition per UTC month; later ones as `*`."""
    source_topic: str = "routed"
    """The routed topic's name, for the dead letters the ledger writes."""
    quota_interval_ms: int = 1_000
    """While a cap's usage only moves, the quota feed sends at most one update per this."""


@dataclass(frozen=True, slots=True)
class CapUsage:
    """How much of a cap a subject has used in one open window."""

    subject_type: str
    subject: str
    cap: str
    metric: str
    window: str
    start_ms: int
    end_ms: int
    used: int
    limit: int


@dataclass
class Applied:
    outbox: list[Pending]
    stats: Stats


class PartitionLedger:
    """All counting state of one partition of the routed topic, behind a `Store`."""

    def __init__(
        self, partition: int, policy: Policy, settings: LedgerSettings, store: Store
    ) -> None:
        self.partition = partition
        self.policy = policy
        self.settings = settings
        self.state = WriteBackCache(store)
        self.horizons = Horizons(
            settings.grace_ms, settings.late_horizon_ms, settings.history_horizon_ms
        )
        self.schedule = Schedule()
        self.ids = IdMemory(partition)
        self.tally = Tally(
            partition, policy, self.horizons, self.state, self.schedule,
            settings.max_endpoints, settings.max_recipients, settings.unknown_app_alerts,
            settings.max_unknown_apps,
        )  # fmt: skip
        self.meta = PartitionMeta(partition)
        self.feed = QuotaFeed(settings.quota_interval_ms)
        self._meta_key = f"w|{partition}"
        self.durable_offset: int | None = None
        """Every record up to this offset is in the store, in every key it touched."""
        self.usage: dict[tuple[str, str, str], CapUsage] = {}
        """Each cap's usage in the newest open window of its subject, for gauges."""

    # -- views ---------------------------------------------------------------------------------
    @property
    def close_wm(self) -> int | None:
        """Windows whose end plus grace is at or before this have closed."""
        return self.meta.progress.close_wm

    @property
    def event_wm(self) -> int | None:
        """Event time every active input partition has reached (state expires on it)."""
        return self.meta.progress.event_wm

    @property
    def last_offset(self) -> int | None:
        """The newest routed offset seen: a later record beyond the next offset reveals records
        the consumer skipped."""
        return self.meta.last_offset

    def next_offset(self) -> int | None:
        """The routed offset expected next; None before the first record."""
        return None if self.meta.last_offset is None else self.meta.last_offset + 1

    def state_sizes(self) -> dict[str, int]:
        """Indexed state: windows and day alerts awaiting close or expiry, remembered ids."""
        return {"windows": len(self.schedule), "ids": len(self.ids)}

    # -- recovery ------------------------------------------------------------------------------
    def bootstrap(self, items: Iterable[tuple[str, list[object]]]) -> list[Pending]:
        """Rebuild the in-memory indexes from this partition's stored items (key, encoded value;
        other partitions' items are passed over); returns the outbox
        records that were written but not confirmed sent before a crash or rebalance."""
        pending: list[Pending] = []
        h, schedule = self.horizons, self.schedule
        for key, raw in items:
            if raw[1] != self.partition:
                continue
            record = decode(key, raw)
            if isinstance(record, PartitionMeta):
                self.meta = record
                self.durable_offset = record.last_offset
            elif isinstance(record, IdBlock):
                self.ids.load(key, record)
            elif isinstance(record, WindowSlot):
                if not record.closed:
                    schedule.close_at(h.close_due(record.end_ms), key)
                    self._track_usage(record)
                    self.feed.refresh(key, record, self.tally.window_caps(record))
                elif not record.compact:
                    schedule.expire_at(h.compact_due(record.end_ms), key)
                else:
                    schedule.expire_at(h.forget_due(record.end_ms), key)
            elif isinstance(record, DayMarker):
                schedule.expire_at(h.forget_due(record.day_ms + DAY_MS), key)
            if not isinstance(record, IdBlock):
                pending.extend(Pending(key, o) for o in record.outbox)
        pending += self._retire_quota_keys()
        return pending

    def _retire_quota_keys(self) -> list[Pending]:
        """Tombstones for the feed keys of caps the policy no longer has."""
        meta = self.meta
        stale = stale_keys(meta.quota_keys, self.policy)
        out = []
        for key in stale:
            meta.quota_keys.discard(key)
            gone = tombstone(key, meta.last_offset, 0)
            meta.outbox.append(gone)
            out.append(Pending(self._meta_key, gone))
        if stale:
            self.state.put(self._meta_key, meta)
        return out

    def acknowledge(self, sent: Iterable[Pending]) -> None:
        """Drop confirmed records from their keys' outboxes."""
        by_key: dict[str, set[str]] = {}
        for p in sent:
            by_key.setdefault(p.key, set()).add(p.record.id)
        for key, ids in by_key.items():
            record = self.meta if key == self._meta_key else self.state.get(key)
            if record is None or isinstance(record, IdBlock) or not record.outbox:
                continue
            record.outbox = [o for o in record.outbox if o.id not in ids]
            self.state.put(key, record)

    def flush(self) -> int:
        """Persist everything applied so far; the meta key last."""
        self.ids.save(self.state, self.meta.last_offset)
        n = self.state.flush(last=self._meta_key)
        self.durable_offset = self.meta.last_offset
        return n

    # -- records -------------------------------------------------------------------------------
    def apply(
        self,
        offset: int,
        events: Sequence[ApiCall],
        now_ms: int,
        ingest_ms: int,
        levels: Sequence[str | None] | None = None,
    ) -> Applied:
        """Fold the events of the routed record at `offset` into the state. `ingest_ms` is when
        they reached Kafka (ids are remembered by it); `levels`, one per event: "app" or "org"
        counts it at that subject level only, None at both (`meter.core.ledger.tally`).
        Idempotent: applying the same offset again changes nothing."""
        if self._replayed(offset):
            return Applied([], Stats())
        admitted = self.ids.admit(events, levels, offset, ingest_ms)
        ctx = Context(
            offset, now_ms, self.close_wm, self.event_wm, admitted.events, admitted.levels
        )
        ctx.stats.duplicates = admitted.duplicates
        kept, kept_levels = self._refuse_too_late(ctx, admitted.events, admitted.levels)
        # Events of a replayed record were counted the first time; an event routed to two
        # ledgers (subject levels) is counted as an event where its app is.
        ctx.stats.events = sum(
            1 for ev, lv in zip(kept, kept_levels, strict=True)
            if id(ev) in admitted.fresh and lv != "org"
        )  # fmt: skip
        self.tally.fold(ctx, kept, kept_levels, admitted.fresh)
        self._finish(ctx)
        meta = self.meta
        if meta.ingest_ms is None or ingest_ms > meta.ingest_ms:
            meta.ingest_ms = ingest_ms
            self.ids.forget(ingest_ms - self.settings.dedup_horizon_ms, self.state)
        self.state.put(self._meta_key, meta)
        return Applied(ctx.outbox, ctx.stats)

    def report(
        self, offset: int, partitions: int, stamp_ms: int, states: Mapping[int, SourceState],
        now_ms: int,
    ) -> Applied:  # fmt: skip
        """A router's progress report at `offset`: merge it, then close, compact and forget what
        the watermarks have passed (`meter.core.ledger.progress`)."""
        if self._replayed(offset):
            return Applied([], Stats())
        moved = self.meta.progress.report(partitions, stamp_ms, states)
        outbox = self._advance(now_ms) if moved else []
        outbox += self._quota_due(now_ms)
        self.state.put(self._meta_key, self.meta)
        return Applied(outbox, Stats())

    def skip(self, offset: int) -> None:
        """A routed record without events or progress (a control record) was seen at `offset`."""
        if not self._replayed(offset):
            self.state.put(self._meta_key, self.meta)

    def _replayed(self, offset: int) -> bool:
        """True for a record the store holds in full; otherwise notes it as seen."""
        if self.durable_offset is not None and offset <= self.durable_offset:
            return True
        meta = self.meta
        if meta.last_offset is None or offset > meta.last_offset:
            meta.last_offset = offset
        return False

    def _refuse_too_late(
        self, ctx: Context, events: list[ApiCall], levels: list[str | None]
    ) -> tuple[list[ApiCall], list[str | None]]:
        """Events whose earliest-ending window (or day) is past the history horizon are
        dead-lettered: every window they touch is then still within it."""
        wm = self.event_wm
        if wm is None:
            return events, levels
        h = self.horizons
        # Every window ends after the event's time: an event this recent is safe everywhere.
        oldest_safe = wm - h.forget_due(0)
        if all(ev.time_ms >= oldest_safe for ev in events):
            return events, levels
        kept: list[ApiCall] = []
        kept_levels: list[str | None] = []
        windows = self.policy.windows
        for ev, level in zip(events, levels, strict=True):
            t = ev.time_ms
            if t >= oldest_safe:
                kept.append(ev)
                kept_levels.append(level)
                continue
            end = min([t - t % DAY_MS + DAY_MS, *(spec.bucket(t).end_ms for spec in windows)])
            if h.forget_due(end) > wm:
                kept.append(ev)
                kept_levels.append(level)
                continue
            letter = too_late(
                ev, level, self.settings.source_topic, self.partition, ctx.offset, wm, ctx.now_ms
            )
            self.meta.outbox.append(letter)
            ctx.outbox.append(Pending(self._meta_key, letter))
            ctx.stats.too_late += 1
        ctx.levels = kept_levels
        ctx.events = kept
        return kept, kept_levels

    def _finish(self, ctx: Context) -> None:
        """Amendments for the windows late events reached; every touched slot stored."""
        ctx.stats.replayed = len(ctx.skipped)
        for key, slot in ctx.touched.items():
            if key in ctx.amended:
                slot.rev += 1
                record = window_record(slot, self.tally.window_caps(slot), ctx.now_ms)
                slot.outbox.append(record)
                ctx.outbox.append(Pending(key, record))
            slot.offset = ctx.offset
            if not slot.closed:
                self._track_usage(slot)
                caps = self.tally.window_caps(slot)
                for cap in self.feed.observe(key, slot, caps, ctx.now_ms):
                    ctx.outbox.append(self._quota(key, slot, cap, ctx.now_ms))
            self.state.put(key, slot)

    # -- quota feed ----------------------------------------------------------------------------
    def _quota(self, key: str, slot: WindowSlot, cap: Cap, now_ms: int) -> Pending:
        """The feed's record of `cap` into the slot's outbox, replacing one not yet sent."""
        record = quota_record(slot, cap, slot.offset, now_ms, self.close_wm)
        slot.outbox = [o for o in slot.outbox if o.kind != QUOTA or o.key != record.key]
        slot.outbox.append(record)
        self.meta.quota_keys.add(record.key)
        return Pending(key, record)

    def _quota_due(self, now_ms: int) -> list[Pending]:
        """Coalesced feed updates whose interval has passed (see `meter.core.ledger.quota`)."""
        out = []
        for slot_key, cap_key in self.feed.due(now_ms):
            slot = self.state.get(slot_key)
            if not isinstance(slot, WindowSlot):
                continue
            cap = next((c for c in self.tally.window_caps(slot) if c.key == cap_key), None)
            if cap is not None:
                out.append(self._quota(slot_key, slot, cap, now_ms))
                self.state.put(slot_key, slot)
        return out

    # -- watermarks ----------------------------------------------------------------------------
    def _advance(self, now_ms: int) -> list[Pending]:
        """Close, compact and forget what the watermarks have passed."""
        out: list[Pending] = []
        h, schedule, state = self.horizons, self.schedule, self.state
        for key in schedule.closing(self.close_wm):
            slot = state.get(key)
            if not isinstance(slot, WindowSlot) or slot.closed:
                continue
            slot.rev = 0
            self._forget_usage(slot)
            final = window_record(slot, self.tally.window_caps(slot), now_ms)
            slot.outbox.append(final)
            state.put(key, slot)
            out.append(Pending(key, final))
            schedule.expire_at(h.compact_due(slot.end_ms), key)
        event_wm = self.event_wm
        for key in schedule.expiring(event_wm):
            found = state.get(key)
            if found is None or event_wm is None:
                continue
            if isinstance(found, WindowSlot) and not found.compact:
                found.compact = True
                found.endpoints = {}
                found.recipients = {}
                state.put(key, found)
                schedule.expire_at(h.forget_due(found.end_ms), key)
            elif isinstance(found, WindowSlot | DayMarker) and found.outbox:
                schedule.expire_at(event_wm + _RETRY_MS, key)  # unsent yet: keep it
            else:
                state.delete(key)
        return out

    def _track_usage(self, slot: WindowSlot) -> None:
        for cap in self.tally.window_caps(slot):
            ukey = (slot.subject_type, slot.subject, cap.key)
            known = self.usage.get(ukey)
            if known is not None and known.start_ms > slot.start_ms:
                continue
            self.usage[ukey] = CapUsage(
                slot.subject_type, slot.subject, cap.key, cap.metric, slot.window,
                slot.start_ms, slot.end_ms, slot.used(cap), cap.limit,
            )  # fmt: skip

    def _forget_usage(self, slot: WindowSlot) -> None:
        for cap in self.tally.window_caps(slot):
            ukey = (slot.subject_type, slot.subject, cap.key)
            known = self.usage.get(ukey)
            if known is not None and known.start_ms == slot.start_ms:
                del self.usage[ukey]

"""The usage ledger of one input partition: exact counts per subject and window, threshold alerts,
window close on the event-time watermark, late amendments, and expiry of old state.

Exactness under replay: every value written carries `off`, the highest source offset folded into
it. All the events of one subject arrive on one partition in offset order, so a record whose
offset is not above a key's `off` has already been applied to that key and is skipped for it.
Records to publish sit in the key's outbox (`ob`) until the adapter confirms they were sent.

Subject levels: an event normally counts for its app and its organisation. An app the policy does
not know may claim different organisations in different events; such an event reaches two
ledgers: at level "app" on the app's partition (app totals, the unknown-app alert) and at level
"org" on the claimed organisation's partition (org totals), so every state key has one owner.
Events of one routed record can have different levels; they are applied together.

Deduplication of repeated event ids runs on ingest time (when the call's record reached Kafka),
not event time: a retry or a re-sent record arrives soon after the original however old the
call's event time is, so a late call is recognised just as well as a current one.

State is cached in memory and written back by `flush()`: the adapter flushes before it publishes
the outbox and before it lets the source offsets be committed.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from meter.core.events import ApiCall
from meter.core.outputs import (
    WINDOWS,
    Json,
    Outbound,
    cap_alert,
    marker_alert,
    stable_id,
    window_json,
)
from meter.core.policy import Cap, Policy
from meter.core.windows import WindowSpec, format_ms

DAY_MS = 86_400_000
_DEDUP_BUCKET_MS = 60_000
_IDS_PER_BLOCK = 1000  # ids are at most ~260 bytes: a block stays far below Kafka's record limit
NO_ENDPOINT = "(none)"
OTHER_ENDPOINTS = "(other)"


class Store(Protocol):
    """Key-value state of one partition (a faust table in the worker, a dict in tests)."""

    def get(self, key: str) -> Json | None: ...
    def put(self, key: str, value: Json) -> None: ...
    def delete(self, key: str) -> None: ...


class WriteBackCache:
    """The ledger's view of its `Store`: reads are cached, writes wait for `flush()`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.values: dict[str, Json] = {}
        self.dirty: set[str] = set()
        self.deleted: set[str] = set()

    def get(self, key: str) -> Json | None:
        value = self.values.get(key)
        if value is None and key not in self.deleted:
            value = self.store.get(key)
            if value is not None:
                self.values[key] = value
        return value

    def put(self, key: str, value: Json) -> None:
        self.values[key] = value
        self.dirty.add(key)
        self.deleted.discard(key)

    def delete(self, key: str) -> None:
        self.values.pop(key, None)
        self.dirty.discard(key)
        self.deleted.add(key)

    def flush(self, last: str | None = None) -> int:
        """Write every changed key to the store, key `last` after all others (the store keeps
        the order: a crash leaves a prefix); returns how many writes that took."""
        for key in self.dirty:
            if key != last:
                self.store.put(key, self.values[key])
        for key in self.deleted:
            self.store.delete(key)
        if last is not None and last in self.dirty:
            self.store.put(last, self.values[last])
        n = len(self.dirty) + len(self.deleted)
        # Closed windows and id blocks are rarely read again: keep only what is live in memory.
        for key in self.dirty:
            value = self.values[key]
            if key[0] == "d" or (value.get("rev", -1) >= 0 and not value.get("ob")):
                del self.values[key]
        self.dirty.clear()
        self.deleted.clear()
        return n


@dataclass(frozen=True)
class LedgerSettings:
    grace_ms: int = 60_000
    """Event-time delay after a window's end before it closes (late events after that amend it)."""
    dedup_horizon_ms: int = 3_600_000
    """How long an event id is remembered for deduplication, in ingest time: behind the newest
    ingest timestamp this partition has seen."""
    late_horizon_ms: int = DAY_MS
    """How long a closed window's totals are kept after close, so late events amend real totals."""
    max_endpoints: int = 200
    """Per-endpoint breakdown entries per window; further endpoints fold into "(other)"."""


@dataclass
class Stats:
    """What one `apply` did, for metrics and logs."""

    events: int = 0
    duplicates: int = 0
    replayed: int = 0
    late: int = 0
    unknown_app: int = 0
    calls_by_org: dict[str, int] = field(default_factory=dict)
    records_by_org: dict[str, int] = field(default_factory=dict)


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


@dataclass(frozen=True, slots=True)
class Pending:
    """An outbound record held in the outbox of state key `key`."""

    key: str
    record: Outbound


@dataclass
class Applied:
    outbox: list[Pending]
    stats: Stats


_CapLevels = list[tuple[Cap, list[tuple[float, str, int]]]]


def _crossing(seq: list[ApiCall], before: int, level: int, calls: bool) -> tuple[int, ApiCall]:
    """The usage right after, and the event whose addition first reached `level`."""
    used = before
    for ev in seq:
        used += 1 if calls else ev.records
        if used >= level:
            return used, ev
    raise AssertionError("level not reached")  # the caller checked before < level <= after


def _levels(cap: Cap) -> list[tuple[float, str, int]]:
    return [
        (t.ratio, t.severity, max(1, math.ceil(t.ratio * cap.limit - 1e-9))) for t in cap.thresholds
    ]


class PartitionLedger:
    """All counting state of one partition of the routed topic, behind a `Store`."""

    def __init__(
        self, partition: int, policy: Policy, settings: LedgerSettings, store: Store
    ) -> None:
        self.partition = partition
        self.policy = policy
        self.settings = settings
        self.state = WriteBackCache(store)
        self.watermark_ms: int | None = None
        """The event-time watermark: the newest event time seen. Windows close on it."""
        self.ingest_ms: int | None = None
        """The newest ingest time seen. Event ids are forgotten on it."""
        self._meta_key = f"w|{partition}"
        self._heap: list[tuple[int, str, str]] = []  # (due_ms, action, key)
        self._ids: dict[str, int] = {}  # "app|id" -> the offset of the record that counted it
        self._new_ids: dict[int, dict[str, int]] = {}  # per time bucket, not yet flushed
        self._bucket_ids: dict[int, list[str]] = {}
        self._bucket_blocks: dict[int, list[str]] = {}
        self.last_offset: int | None = None
        """The newest source offset seen (applied, or a record without events): a later record
        beyond the next offset reveals records the consumer skipped."""
        self.durable_offset: int | None = None
        """Every record up to this offset is in the store, in every key it touched: the meta key
        that records it is written last in each flush. A replay of such a record is skipped
        whole, even where its keys have expired since."""
        self._caps: dict[tuple[str, str], dict[str, _CapLevels]] = {}
        self._pending_markers: list[Pending] = []
        self.usage: dict[tuple[str, str, str], CapUsage] = {}
        """Each cap's usage in the newest open window of its subject, for gauges."""

    # -- recovery ------------------------------------------------------------------------------
    def bootstrap(self, items: Iterable[tuple[str, Json]]) -> list[Pending]:
        """Rebuild the in-memory indexes from this partition's stored items; returns the outbox
        records that were written but not confirmed sent before a crash or rebalance."""
        pending: list[Pending] = []
        grace, late = self.settings.grace_ms, self.settings.late_horizon_ms
        for key, value in items:
            if value.get("p") != self.partition:
                continue
            kind = key[0]
            if kind == "w":
                self.watermark_ms = value["wm"]
                self.ingest_ms = value.get("im")
                self.last_offset = self.durable_offset = value.get("lo")
            elif kind == "d":
                ids: dict[str, int] = value["ids"]
                self._ids.update(ids)
                self._bucket_ids.setdefault(value["t"], []).extend(ids)
                self._bucket_blocks.setdefault(value["t"], []).append(key)
            elif kind == "s":
                if value["rev"] < 0:
                    heapq.heappush(self._heap, (value["we"] + grace, "close", key))
                    self._track_usage(value)
                else:
                    heapq.heappush(self._heap, (value["we"] + grace + late, "expire", key))
            elif kind == "m":
                heapq.heappush(self._heap, (value["we"] + grace + late, "expire", key))
            pending.extend(Pending(key, Outbound.from_json(o)) for o in value.get("ob", ()))
        return pending

    def acknowledge(self, sent: Iterable[Pending]) -> None:
        """Drop confirmed records from their keys' outboxes."""
        by_key: dict[str, set[str]] = {}
        for p in sent:
            by_key.setdefault(p.key, set()).add(p.record.id)
        for key, ids in by_key.items():
            value = self.state.get(key)
            if value is None or not value.get("ob"):
                continue
            value["ob"] = [o for o in value["ob"] if o["id"] not in ids]
            self.state.put(key, value)

    def flush(self) -> int:
        """Persist everything applied so far (new ids as one block per time bucket)."""
        for bucket, ids in self._new_ids.items():
            items = list(ids.items())
            for n, i in enumerate(range(0, len(items), _IDS_PER_BLOCK)):
                block = dict(items[i : i + _IDS_PER_BLOCK])
                key = f"d|{self.partition}|{bucket}|{self.last_offset}" + (f"|{n}" if n else "")
                self.state.put(key, {"p": self.partition, "t": bucket, "ids": block})
                self._bucket_blocks.setdefault(bucket, []).append(key)
        self._new_ids = {}
        n = self.state.flush(last=self._meta_key)
        self.durable_offset = self.last_offset
        return n

    # -- counting ------------------------------------------------------------------------------
    def apply(
        self,
        offset: int,
        events: Sequence[ApiCall],
        now_ms: int,
        ingest_ms: int,
        levels: Sequence[str | None] | None = None,
    ) -> Applied:
        """Fold the events of the source record at `offset` into the state, then close windows the
        watermark has passed. `ingest_ms` is when the events reached Kafka (the newest of their
        input records' timestamps): ids are remembered by it. `levels`, one per event: "app" or
        "org" counts that event for that subject level only, None for both (see the module doc).
        Idempotent: applying the same offset again changes nothing."""
        stats = Stats()
        if self.durable_offset is not None and offset <= self.durable_offset:
            return Applied([], stats)  # a replay of a record the store holds in full
        touched: dict[str, Json] = {}
        skipped: set[str] = set()
        wm = self.watermark_ms
        seen_here: set[str] = set()
        ids = self._ids
        self._seen(offset)
        accepted: list[ApiCall] = []
        fresh: set[int] = set()  # id() of events first counted by this record (not a replay)
        bucket = ingest_ms // _DEDUP_BUCKET_MS
        # The two halves of an event routed to both levels may meet in one ledger: they are not
        # repeats of each other.
        accepted_levels: list[str | None] = []
        for i, ev in enumerate(events):
            level = levels[i] if levels else None
            dkey = f"{ev.app_id}|{ev.id}" if level is None else f"{ev.app_id}|{ev.id}|{level}"
            if dkey in seen_here:
                stats.duplicates += 1
                continue
            seen_here.add(dkey)
            known = ids.get(dkey)
            if known is None:
                fresh.add(id(ev))
                ids[dkey] = offset
                self._new_ids.setdefault(bucket, {})[dkey] = offset
                self._bucket_ids.setdefault(bucket, []).append(dkey)
            elif known != offset:  # counted by another record: a retry or a re-sent event
                stats.duplicates += 1
                continue
            accepted.append(ev)
            accepted_levels.append(level)
        # Events of a replayed record were counted the first time; an event routed to two
        # ledgers (subject levels, in the module doc) is counted as an event where its app is.
        if levels:
            stats.events = sum(
                1
                for ev, level in zip(accepted, accepted_levels, strict=True)
                if id(ev) in fresh and level != "org"
            )
        else:
            stats.events = len(fresh)
        self._count(accepted, accepted_levels, fresh, offset, wm, touched, skipped, stats, now_ms)

        outbox: list[Pending] = []
        for key, slot in touched.items():
            new: list[Json] = slot.pop("_new", [])
            if slot.pop("_late", False):
                slot["rev"] += 1
                amendment = self._window_record(slot, now_ms).to_json()
                slot["ob"].append(amendment)
                new.append(amendment)
            slot["off"] = offset
            self.state.put(key, slot)
            if slot["rev"] < 0:
                self._track_usage(slot)
            outbox.extend(Pending(key, Outbound.from_json(o)) for o in new)
        stats.replayed = len(skipped)
        if events:
            top = max(ev.time_ms for ev in events)
            if wm is None or top > wm:
                self.watermark_ms = top
        if self.ingest_ms is None or ingest_ms > self.ingest_ms:
            self.ingest_ms = ingest_ms
            self._forget_ids(ingest_ms - self.settings.dedup_horizon_ms)
        self._put_meta()
        outbox.extend(self._advance(offset, now_ms))
        return Applied(outbox, stats)

    def next_offset(self) -> int | None:
        """The source offset expected next; None before the first record."""
        return None if self.last_offset is None else self.last_offset + 1

    def skip(self, offset: int) -> None:
        """A source record without events (a control record) was seen at `offset`."""
        self._seen(offset)
        self._put_meta()

    def _seen(self, offset: int) -> None:
        if self.last_offset is None or offset > self.last_offset:
            self.last_offset = offset

    def _put_meta(self) -> None:
        meta = {
            "p": self.partition,
            "wm": self.watermark_ms,
            "im": self.ingest_ms,
            "lo": self.last_offset,
        }
        self.state.put(self._meta_key, meta)

    def _count(
        self,
        events: list[ApiCall],
        levels: list[str | None],
        fresh: set[int],
        offset: int,
        wm: int | None,
        touched: dict[str, Json],
        skipped: set[str],
        stats: Stats,
        now_ms: int,
    ) -> None:
        """Group the events by subject and window first: the per-window work is then done once
        per group, and events are looked at one by one only where a threshold is crossed."""
        policy = self.policy
        windows = policy.windows
        groups: dict[tuple[str, str, int, int], list[ApiCall]] = {}
        for ev, level in zip(events, levels, strict=True):
            apps, orgs = level != "org", level != "app"
            org = policy.org_of(ev.app_id, ev.org_id)
            first_time = id(ev) in fresh
            if first_time and org is not None and orgs:
                stats.calls_by_org[org] = stats.calls_by_org.get(org, 0) + 1
                stats.records_by_org[org] = stats.records_by_org.get(org, 0) + ev.records
            for i, spec in enumerate(windows):
                start = spec.bucket(ev.time_ms).start_ms
                if apps:
                    groups.setdefault(("app", ev.app_id, i, start), []).append(ev)
                if org is not None and orgs:
                    groups.setdefault(("org", org, i, start), []).append(ev)
            if apps and not policy.known_app(ev.app_id):
                stats.unknown_app += first_time
                self._marker("unknown_app", "warning", "app", ev.app_id, org, ev, wm, now_ms, {})
            # A restricted-use alert belongs to the org if there is one, else to the app.
            if ev.recipient is not None and (orgs if org is not None else apps):
                self._check_recipient(ev, org, wm, now_ms)
        late_events: set[int] = set()
        for (stype, subject, i, _), group in groups.items():
            spec = windows[i]
            first = group[0]
            org = subject if stype == "org" else policy.org_of(subject, first.org_id)
            slot = self._slot(
                stype, subject, org, spec, first.time_ms, offset, wm, touched, skipped
            )
            if slot is None:
                continue
            late = slot["rev"] >= 0
            if late:
                late_events.update(id(ev) for ev in group)
            self._add(slot, group, self._caps_for(stype, subject).get(spec.name, ()), late, now_ms)
        stats.late = len(late_events)

    def _check_recipient(self, ev: ApiCall, org: str | None, wm: int | None, now_ms: int) -> None:
        rule = self.policy.restricted_violation(org, ev.recipient, ev.time_ms)
        if rule is None:
            return
        details = {"app_id": ev.app_id, "recipient": rule.recipient, "rule": rule.requires}
        stype, subject = ("org", org) if org is not None else ("app", ev.app_id)
        self._marker("restricted_use", rule.severity, stype, subject, org, ev, wm, now_ms, details)

    def _caps_for(self, stype: str, subject: str) -> dict[str, _CapLevels]:
        cached = self._caps.get((stype, subject))
        if cached is None:
            caps = (
                self.policy.app_caps(subject) if stype == "app" else self.policy.org_caps(subject)
            )
            cached = {}
            for cap in caps:
                cached.setdefault(cap.window.name, []).append((cap, _levels(cap)))
            self._caps[(stype, subject)] = cached
        return cached

    def _slot(
        self,
        stype: str,
        subject: str,
        org: str | None,
        spec: WindowSpec,
        ts: int,
        offset: int,
        wm: int | None,
        touched: dict[str, Json],
        skipped: set[str],
    ) -> Json | None:
        w = spec.bucket(ts)
        key = f"s|{stype}|{subject}|{spec.name}|{w.start_ms}"
        slot = touched.get(key)
        if slot is not None:
            return slot
        if key in skipped:
            return None
        slot = self.state.get(key)
        if slot is not None and slot["off"] >= offset:
            skipped.add(key)
            return None
        if slot is None:
            grace = self.settings.grace_ms
            closed = wm is not None and w.end_ms + grace <= wm
            base_expired = (
                closed
                and wm is not None
                and (w.end_ms + grace + self.settings.late_horizon_ms <= wm)
            )
            slot = {
                "p": self.partition,
                "off": offset,
                "st": stype,
                "sub": subject,
                "org": org,
                "w": spec.name,
                "ws": w.start_ms,
                "we": w.end_ms,
                "c": 0,
                "r": 0,
                "ep": {},
                "fc": {},
                "fired": [],
                "rev": 0 if closed else -1,
                "late": 0,
                "ob": [],
            }
            if base_expired:
                slot["base"] = "expired"
            due = w.end_ms + grace + (self.settings.late_horizon_ms if closed else 0)
            heapq.heappush(self._heap, (due, "expire" if closed else "close", key))
        touched[key] = slot
        return slot

    def _add(
        self, slot: Json, group: list[ApiCall], caps: _CapLevels | tuple[()], late: bool, now: int
    ) -> None:
        c0, r0 = slot["c"], slot["r"]
        slot["c"] = c0 + len(group)
        slot["r"] = r0 + sum(ev.records for ev in group)
        eps = slot["ep"]
        for ev in group:
            ep = ev.endpoint or NO_ENDPOINT
            cell = eps.get(ep)
            if cell is None:
                if len(eps) >= self.settings.max_endpoints:
                    ep = OTHER_ENDPOINTS
                cell = eps.setdefault(ep, [0, 0])
            cell[0] += 1
            cell[1] += ev.records
        if late:
            slot["late"] += len(group)
            slot["_late"] = True
        for cap, levels in caps:
            calls = cap.metric == "calls"
            if cap.filtered:
                seq = [ev for ev in group if cap.matches(ev.endpoint, ev.status)]
                if not seq:
                    continue
                fc = slot["fc"].setdefault(cap.key, [0, 0])
                before = fc[0] if calls else fc[1]
                fc[0] += len(seq)
                fc[1] += sum(ev.records for ev in seq)
                after = fc[0] if calls else fc[1]
            else:
                seq = group
                before, after = (c0, slot["c"]) if calls else (r0, slot["r"])
            for ratio, severity, level in levels:
                if not before < level <= after:
                    continue
                tag = f"{cap.key}@{ratio}"
                if tag in slot["fired"]:
                    continue
                slot["fired"].append(tag)
                used, crossing = _crossing(seq, before, level, calls)
                alert = cap_alert(
                    subject_type=slot["st"],
                    subject=slot["sub"],
                    org_id=slot["org"],
                    cap_key=cap.key,
                    metric=cap.metric,
                    window=window_json(slot["w"], slot["ws"], slot["we"]),
                    window_start_ms=slot["ws"],
                    limit=cap.limit,
                    used=used,
                    threshold=ratio,
                    severity=severity,
                    crossed_at_ms=crossing.time_ms,
                    event_id=crossing.id,
                    late=late,
                    now_ms=now,
                )
                self._emit(slot, alert)

    @staticmethod
    def _emit(value: Json, record: Outbound) -> None:
        data = record.to_json()
        value.setdefault("ob", []).append(data)
        value.setdefault("_new", []).append(data)

    def _marker(
        self,
        kind: str,
        severity: str,
        stype: str,
        subject: str,
        org: str | None,
        ev: ApiCall,
        wm: int | None,
        now_ms: int,
        details: Json,
    ) -> None:
        """Raise a once-per-subject-per-UTC-day alert (unknown app, restricted use)."""
        day = ev.time_ms - ev.time_ms % DAY_MS
        extra = "|".join(str(v) for v in details.values())
        key = f"m|{kind}|{stype}|{subject}|{extra}|{day}"
        if self.state.get(key) is not None:
            return
        marker: Json = {"p": self.partition, "ws": day, "we": day + DAY_MS, "ob": []}
        late = wm is not None and day + DAY_MS + self.settings.grace_ms <= wm
        alert = marker_alert(
            kind=kind,
            severity=severity,
            subject_type=stype,
            subject=subject,
            org_id=org,
            day_start_ms=day,
            day_end_ms=day + DAY_MS,
            crossed_at_ms=ev.time_ms,
            event_id=ev.id,
            late=late,
            now_ms=now_ms,
            details=details,
        )
        marker["ob"].append(alert.to_json())
        self.state.put(key, marker)
        # Kept as long as the day's windows can be amended, so a late call cannot alert twice.
        expire = day + DAY_MS + self.settings.grace_ms + self.settings.late_horizon_ms
        heapq.heappush(self._heap, (expire, "expire", key))
        self._pending_markers.append(Pending(key, alert))

    # -- watermark -----------------------------------------------------------------------------
    def _advance(self, offset: int, now_ms: int) -> list[Pending]:
        """Close windows and expire state the watermark has passed."""
        out: list[Pending] = self._pending_markers
        self._pending_markers = []
        wm = self.watermark_ms
        if wm is None:
            return out
        heap = self._heap
        while heap and heap[0][0] <= wm:
            _, action, key = heapq.heappop(heap)
            value = self.state.get(key)
            if value is None:
                continue
            if action == "close":
                if value["rev"] >= 0:
                    continue
                value["rev"] = 0
                value["off"] = max(value["off"], offset)
                self._forget_usage(value)
                record = self._window_record(value, now_ms)
                value["ob"].append(record.to_json())
                self.state.put(key, value)
                out.append(Pending(key, record))
                due = value["we"] + self.settings.grace_ms + self.settings.late_horizon_ms
                heapq.heappush(heap, (due, "expire", key))
            elif value.get("ob"):
                heapq.heappush(heap, (wm + _DEDUP_BUCKET_MS, "expire", key))  # unsent: keep
            else:
                self.state.delete(key)
        return out

    def _forget_ids(self, horizon: int) -> None:
        """Drop the ids of ingest-time buckets that ended before `horizon`."""
        for bucket in [b for b in self._bucket_ids if (b + 1) * _DEDUP_BUCKET_MS <= horizon]:
            for dkey in self._bucket_ids.pop(bucket):
                self._ids.pop(dkey, None)
            self._new_ids.pop(bucket, None)
            for key in self._bucket_blocks.pop(bucket, ()):
                self.state.delete(key)

    def _track_usage(self, slot: Json) -> None:
        for cap, _ in self._caps_for(slot["st"], slot["sub"]).get(slot["w"], ()):
            ukey = (slot["st"], slot["sub"], cap.key)
            known = self.usage.get(ukey)
            if known is not None and known.start_ms > slot["ws"]:
                continue
            counts = slot["fc"].get(cap.key, (0, 0)) if cap.filtered else (slot["c"], slot["r"])
            used = counts[0] if cap.metric == "calls" else counts[1]
            self.usage[ukey] = CapUsage(
                slot["st"],
                slot["sub"],
                cap.key,
                cap.metric,
                slot["w"],
                slot["ws"],
                slot["we"],
                used,
                cap.limit,
            )

    def _forget_usage(self, slot: Json) -> None:
        for cap, _ in self._caps_for(slot["st"], slot["sub"]).get(slot["w"], ()):
            ukey = (slot["st"], slot["sub"], cap.key)
            known = self.usage.get(ukey)
            if known is not None and known.start_ms == slot["ws"]:
                del self.usage[ukey]

    def state_sizes(self) -> dict[str, int]:
        """Indexed state keys by kind: window slots and markers awaiting close or expiry, ids."""
        return {
            "windows": len(self._heap),
            "ids": len(self._ids),
        }

    def _window_record(self, slot: Json, now_ms: int) -> Outbound:
        rev = slot["rev"]
        caps_out = []
        for cap, _ in self._caps_for(slot["st"], slot["sub"]).get(slot["w"], ()):
            counts = slot["fc"].get(cap.key, [0, 0]) if cap.filtered else [slot["c"], slot["r"]]
            used = counts[0] if cap.metric == "calls" else counts[1]
            caps_out.append(
                {
                    "cap": cap.key,
                    "metric": cap.metric,
                    "limit": cap.limit,
                    "used": used,
                    "utilization": round(used / cap.limit, 6),
                }
            )
        rid = stable_id("window", slot["st"], slot["sub"], slot["w"], slot["ws"], rev)
        value: dict[str, Any] = {
            "id": rid,
            "subject_type": slot["st"],
            "subject": slot["sub"],
            "org_id": slot["org"],
            "window": window_json(slot["w"], slot["ws"], slot["we"]),
            "revision": rev,
            "calls": slot["c"],
            "records": slot["r"],
            "endpoints": {ep: {"calls": c, "records": r} for ep, (c, r) in slot["ep"].items()},
            "caps": caps_out,
            "late_events": slot["late"],
            "base": slot.get("base", "complete"),
            "emitted_at": format_ms(now_ms),
        }
        return Outbound(WINDOWS, rid, f"{slot['st']}:{slot['sub']}", value, now_ms)

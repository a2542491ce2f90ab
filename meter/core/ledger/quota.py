"""The quota feed: for every subject and cap, the usage of its current window, for gateways to
enforce from (topic `quota-state`, compacted, key `<subject type>:<subject>|<cap>`).

An update goes out at once when a cap's state changes (ok, warning, exceeded) or its window
changes (a new window is a reset); while usage only moves, updates are coalesced to one per key
per `interval_ms`, the rest sent by the next progress report after the interval. `seq` is the
routed offset of the last record that changed the usage: monotonic per key, since a subject
lives on one routed partition. A cap or subject that left the policy gets a tombstone.

What waits for its interval is held in memory only: a ledger that starts (restart, rebalance)
sends every open window's state again with its first progress report, so an update that was
waiting when a worker died is not lost. The feed says nothing when a window ends without a new
event: a record whose `reset_at` has passed means the usage is back to 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meter.core.ledger.records import WindowSlot
from meter.core.outputs import QUOTA, Outbound, window_json
from meter.core.policy import Cap, Policy
from meter.core.windows import format_ms

OK, WARNING, EXCEEDED = "ok", "warning", "exceeded"


def quota_key(subject_type: str, subject: str, cap_key: str) -> str:
    return f"{subject_type}:{subject}|{cap_key}"


def cap_state(cap: Cap, used: int) -> tuple[str, list[float]]:
    """(state, thresholds crossed): exceeded at the limit, warning from the first threshold."""
    crossed = [t.ratio for t in cap.thresholds if used >= t.ratio * cap.limit - 1e-9]
    if used >= cap.limit:
        return EXCEEDED, crossed
    return (WARNING if crossed else OK), crossed


def quota_record(
    slot: WindowSlot, cap: Cap, seq: int, now_ms: int, watermark_ms: int | None
) -> Outbound:
    """The feed's record of `cap` for the subject of `slot`, whose window is its current one."""
    used = slot.used(cap)
    state, crossed = cap_state(cap, used)
    key = quota_key(slot.subject_type, slot.subject, cap.key)
    value: dict[str, Any] = {
        "subject": {"type": slot.subject_type, "id": slot.subject, "org_id": slot.org},
        "cap": cap.key,
        "name": cap.id,
        "metric": cap.metric,
        "endpoints": sorted(cap.endpoints) if cap.endpoints else None,
        "window": window_json(slot.window, slot.start_ms, slot.end_ms),
        "limit": cap.limit,
        "enforcement": cap.enforcement,
        "used": used,
        "remaining": max(0, cap.limit - used),
        "utilization": round(used / cap.limit, 6),
        "state": state,
        "thresholds_crossed": crossed,
        "reset_at": format_ms(slot.end_ms),
        "seq": seq,
        "watermark": None if watermark_ms is None else format_ms(watermark_ms),
        "updated_at": format_ms(now_ms),
    }
    return Outbound(QUOTA, f"{key}@{seq}", key, value, now_ms)


def tombstone(key: str, offset: int | None, now_ms: int) -> Outbound:
    """The record that removes `key` from the feed, decided at routed `offset`."""
    return Outbound(QUOTA, f"{key}@removed@{offset}", key, {}, now_ms, tombstone=True)


_NEVER = -(2**62)


@dataclass
class _Sent:
    start_ms: int
    state: str
    at_ms: int


@dataclass
class QuotaFeed:
    """What the feed last said of each key of one partition (in memory: after a restart the
    first update of a key goes out at once), and the keys with usage not yet sent."""

    interval_ms: int
    sent: dict[str, _Sent] = field(default_factory=dict)
    waiting: dict[str, tuple[str, str]] = field(default_factory=dict)
    """key -> (state key of its slot, cap key): usage moved, update coalesced."""

    def observe(
        self, slot_key: str, slot: WindowSlot, caps: Iterable[Cap], now_ms: int
    ) -> list[Cap]:
        """The caps of an open, touched `slot` whose update goes out now; others wait."""
        now: list[Cap] = []
        for cap in caps:
            key = quota_key(slot.subject_type, slot.subject, cap.key)
            last = self.sent.get(key)
            if last is not None and last.start_ms > slot.start_ms:
                continue  # a newer window is current
            state, _ = cap_state(cap, slot.used(cap))
            if (
                last is None
                or last.start_ms != slot.start_ms
                or last.state != state
                or now_ms - last.at_ms >= self.interval_ms
            ):
                self.sent[key] = _Sent(slot.start_ms, state, now_ms)
                self.waiting.pop(key, None)
                now.append(cap)
            else:
                self.waiting[key] = (slot_key, cap.key)
        return now

    def refresh(self, slot_key: str, slot: WindowSlot, caps: Iterable[Cap]) -> None:
        """Queue the state of an open window found at startup, to be sent with the first
        progress report (the newest window of a subject wins)."""
        for cap in caps:
            key = quota_key(slot.subject_type, slot.subject, cap.key)
            last = self.sent.get(key)
            if last is not None and last.start_ms > slot.start_ms:
                continue
            self.sent[key] = _Sent(slot.start_ms, "", _NEVER)
            self.waiting[key] = (slot_key, cap.key)

    def due(self, now_ms: int) -> list[tuple[str, str]]:
        """(slot key, cap key) of coalesced updates whose interval has passed."""
        ready = [
            (key, where)
            for key, where in self.waiting.items()
            if now_ms - self.sent[key].at_ms >= self.interval_ms
        ]
        for key, _ in ready:
            del self.waiting[key]
            self.sent[key].at_ms = now_ms
        return [where for _, where in ready]


def stale_keys(keys: Iterable[str], policy: Policy) -> list[str]:
    """Feed keys whose subject no longer has that cap in `policy`: they get a tombstone."""
    out = []
    for key in keys:
        subject_part, _, cap_key = key.partition("|")
        stype, _, subject = subject_part.partition(":")
        caps = policy.app_caps(subject) if stype == "app" else policy.org_caps(subject)
        if not any(cap.key == cap_key for cap in caps):
            out.append(key)
    return out

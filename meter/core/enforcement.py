"""Current usage and enforcement decisions from the quota feed (pure: no I/O).

`FeedState` holds the last record of every key of the `quota-state` topic. `subject_caps` joins a
subject's caps in the policy with those records at a given time: a record whose window has ended
means the window has reset (usage 0 in the window that holds `now`), and a cap with no record yet
has used nothing. `check` decides whether an app may make a call: denied while a hard cap it
draws from is exceeded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from meter.core.ledger.quota import EXCEEDED, cap_state
from meter.core.policy import Policy
from meter.core.policy_model import Cap
from meter.core.windows import format_ms

Json = dict[str, Any]
SUBJECT_TYPES = ("app", "org")


def parse_time_ms(text: str) -> int:
    """Epoch ms of an RFC 3339 time as the meter writes it."""
    return int(datetime.fromisoformat(text).timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class CapNow:
    """One cap of one subject at a moment: its window holding that moment and the usage."""

    subject_type: str
    subject: str
    org_id: str | None
    cap: Cap
    start_ms: int
    end_ms: int
    used: int
    seq: int | None
    """The feed record's `seq`; None when the cap has no record in this window."""
    updated_at: str | None

    @property
    def remaining(self) -> int:
        return max(0, self.cap.limit - self.used)

    @property
    def state(self) -> str:
        return cap_state(self.cap, self.used)[0]

    @property
    def blocking(self) -> bool:
        """Exceeded, and enforced: a call drawing from it is denied."""
        return self.state == EXCEEDED and self.cap.enforcement == "hard"

    def reset_in_s(self, now_ms: int) -> int:
        """Whole seconds until the window resets (at least 1 while it has not)."""
        return max(1, math.ceil((self.end_ms - now_ms) / 1000))

    def to_json(self) -> Json:
        cap = self.cap
        return {
            "cap": cap.key,
            "name": cap.id,
            "metric": cap.metric,
            "endpoints": sorted(cap.endpoints) if cap.endpoints else None,
            "enforcement": cap.enforcement,
            "window": {
                "size": cap.window.name,
                "start": format_ms(self.start_ms),
                "end": format_ms(self.end_ms),
            },
            "limit": cap.limit,
            "used": self.used,
            "remaining": self.remaining,
            "utilization": round(self.used / cap.limit, 6),
            "state": self.state,
            "thresholds_crossed": cap_state(cap, self.used)[1],
            "reset_at": format_ms(self.end_ms),
            "seq": self.seq,
            "updated_at": self.updated_at,
        }


class FeedState:
    """The last record of every key of the quota feed (a tombstone removes the key). A record
    with a lower `seq` than the one held is stale and ignored."""

    def __init__(self) -> None:
        self._by_subject: dict[tuple[str, str], dict[str, Json]] = {}
        self.updated_ms: int | None = None
        """`updated_at` of the newest record applied (how fresh the feed is)."""
        self.watermark_ms: int | None = None
        """The lowest watermark among the partitions' newest records (None before any)."""
        self._watermarks: dict[int, int] = {}

    def __len__(self) -> int:
        return sum(len(caps) for caps in self._by_subject.values())

    def apply(self, key: str, value: Json | None, partition: int = 0) -> None:
        subject_part, _, cap_key = key.partition("|")
        stype, _, subject = subject_part.partition(":")
        caps = self._by_subject.setdefault((stype, subject), {})
        if value is None:
            caps.pop(cap_key, None)
            if not caps:
                del self._by_subject[stype, subject]
            return
        held = caps.get(cap_key)
        if held is not None and int(held.get("seq", -1)) > int(value.get("seq", -1)):
            return
        caps[cap_key] = value
        updated = value.get("updated_at")
        if isinstance(updated, str):
            at = parse_time_ms(updated)
            self.updated_ms = at if self.updated_ms is None else max(self.updated_ms, at)
        watermark = value.get("watermark")
        if isinstance(watermark, str):
            self._watermarks[partition] = parse_time_ms(watermark)
            self.watermark_ms = min(self._watermarks.values())

    def record(self, subject_type: str, subject: str, cap_key: str) -> Json | None:
        return self._by_subject.get((subject_type, subject), {}).get(cap_key)

    def subjects(self) -> Iterable[tuple[str, str]]:
        return self._by_subject.keys()


def cap_now(
    cap: Cap, subject_type: str, subject: str, org_id: str | None, record: Json | None, now_ms: int
) -> CapNow:
    """The cap's state at `now_ms` from its last feed record (or none)."""
    if record is not None:
        start = parse_time_ms(record["window"]["start"])
        end = parse_time_ms(record["window"]["end"])
        if now_ms < end:  # not reset yet (a window a little ahead of the clock counts too)
            return CapNow(
                subject_type, subject, org_id, cap, start, end, int(record["used"]),
                int(record["seq"]), record.get("updated_at"),
            )  # fmt: skip
    window = cap.window.bucket(now_ms)
    return CapNow(subject_type, subject, org_id, cap, window.start_ms, window.end_ms, 0, None, None)


def org_of(policy: Policy, subject_type: str, subject: str) -> str | None:
    return policy.org_of(subject, None) if subject_type == "app" else subject


def caps_of(policy: Policy, subject_type: str, subject: str) -> tuple[Cap, ...]:
    return policy.app_caps(subject) if subject_type == "app" else policy.org_caps(subject)


def known(policy: Policy, subject_type: str, subject: str) -> bool:
    return subject in (policy.apps if subject_type == "app" else policy.orgs)


def subject_caps(
    policy: Policy, feed: FeedState, subject_type: str, subject: str, now_ms: int
) -> list[CapNow]:
    """Every cap of the subject in the policy, at `now_ms`."""
    org = org_of(policy, subject_type, subject)
    out = []
    for cap in caps_of(policy, subject_type, subject):
        record = feed.record(subject_type, subject, cap.key)
        out.append(cap_now(cap, subject_type, subject, org, record, now_ms))
    return out


def worst_state(caps: Iterable[CapNow]) -> str:
    order = {"ok": 0, "warning": 1, "exceeded": 2}
    return max((c.state for c in caps), key=order.__getitem__, default="ok")


@dataclass(frozen=True, slots=True)
class Decision:
    """May the app make this call? `caps`: the caps it draws from (app's and its org's)."""

    allowed: bool
    caps: list[CapNow]
    violated: list[CapNow]
    retry_after_s: int | None
    """Seconds until every violated cap has reset; None when allowed."""


def check(
    policy: Policy, feed: FeedState, app_id: str, endpoint: str | None, now_ms: int
) -> Decision:
    """Allowed unless a hard cap of the app or of its organisation that counts calls to
    `endpoint` is exceeded. An app the policy does not know has no caps (the meter counts it and
    alerts on it; refusing unknown callers is the gateway's authentication's job)."""
    caps = subject_caps(policy, feed, "app", app_id, now_ms)
    org = policy.org_of(app_id, None)
    if org is not None:
        caps += subject_caps(policy, feed, "org", org, now_ms)
    drawn = [c for c in caps if c.cap.matches_endpoint(endpoint)]
    violated = [c for c in drawn if c.blocking]
    retry = max((c.reset_in_s(now_ms) for c in violated), default=None)
    return Decision(not violated, drawn, violated, retry)

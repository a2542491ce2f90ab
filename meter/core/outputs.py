"""The records the meter emits: alerts (`usage-alerts`) and window totals (`usage-windows`).

Ids are deterministic, so a consumer can drop a record it has already seen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from meter.core.windows import format_ms

ALERTS = "alerts"
WINDOWS = "windows"
DEAD_LETTERS = "dead-letters"
QUOTA = "quota"

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Outbound:
    """A record to publish: `kind` is ALERTS, WINDOWS, DEAD_LETTERS or QUOTA; `id` also travels
    as the `meter-id` header, next to `headers`. A `tombstone` is sent with a null value (it
    deletes `key` from a compacted topic); its `value` is empty."""

    kind: str
    id: str
    key: str
    value: Json
    ts_ms: int
    headers: tuple[tuple[str, str], ...] = ()
    tombstone: bool = False

    def to_json(self) -> Json:
        out: Json = {"kind": self.kind, "id": self.id, "key": self.key, "v": self.value}
        out["ts"] = self.ts_ms
        if self.headers:
            out["h"] = [list(h) for h in self.headers]
        if self.tombstone:
            out["x"] = 1
        return out

    @classmethod
    def from_json(cls, data: Json) -> Outbound:
        headers = tuple((k, v) for k, v in data.get("h", ()))
        return cls(
            data["kind"],
            data["id"],
            data["key"],
            data["v"],
            data["ts"],
            headers,
            bool(data.get("x")),
        )


def stable_id(*parts: object) -> str:
    """A 32-hex-digit id derived only from `parts`: the same facts always give the same id."""
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def window_json(size: str, start_ms: int, end_ms: int) -> Json:
    return {"size": size, "start": format_ms(start_ms), "end": format_ms(end_ms)}


def cap_alert(
    *,
    subject_type: str,
    subject: str,
    org_id: str | None,
    cap_key: str,
    metric: str,
    window: Json,
    window_start_ms: int,
    limit: int,
    used: int,
    threshold: float,
    severity: str,
    crossed_at_ms: int,
    event_id: str,
    late: bool,
    now_ms: int,
) -> Outbound:
    alert_id = stable_id("cap", subject_type, subject, cap_key, window_start_ms, threshold)
    value: Json = {
        "id": alert_id,
        "kind": "cap",
        "severity": severity,
        "subject_type": subject_type,
        "subject": subject,
        "org_id": org_id,
        "cap": cap_key,
        "metric": metric,
        "window": window,
        "limit": limit,
        "used": used,
        "threshold": threshold,
        "utilization": round(used / limit, 6),
        "crossed_at": format_ms(crossed_at_ms),
        "emitted_at": format_ms(now_ms),
        "late": late,
        "event_id": event_id,
    }
    return Outbound(ALERTS, alert_id, f"{subject_type}:{subject}", value, now_ms)


def marker_alert(
    *,
    kind: str,
    severity: str,
    subject_type: str,
    subject: str,
    org_id: str | None,
    day_start_ms: int,
    day_end_ms: int,
    crossed_at_ms: int,
    event_id: str,
    late: bool,
    now_ms: int,
    details: Json,
) -> Outbound:
    """An alert raised once per subject and UTC day: `unknown_app` or `restricted_use`."""
    alert_id = stable_id(kind, subject_type, subject, *sorted(details.items()), day_start_ms)
    value: Json = {
        "id": alert_id,
        "kind": kind,
        "severity": severity,
        "subject_type": subject_type,
        "subject": subject,
        "org_id": org_id,
        "cap": None,
        "metric": "calls",
        "window": window_json("1d", day_start_ms, day_end_ms),
        "limit": None,
        "used": 1,
        "threshold": None,
        "crossed_at": format_ms(crossed_at_ms),
        "emitted_at": format_ms(now_ms),
        "late": late,
        "event_id": event_id,
        **details,
    }
    return Outbound(ALERTS, alert_id, f"{subject_type}:{subject}", value, now_ms)

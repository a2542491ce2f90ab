"""What the meter must emit, computed independently from what a test sent: window totals, cap
usage and alerts, with the documented id formulas. Nothing here imports meter's counting code, so
a regression in the product shows up as a mismatch."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.harness.data import Event, iso, ms


def stable_id(*parts: object) -> str:
    """The documented deterministic id: sha256 of the parts joined by U+001F, 32 hex digits."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]


def cap_alert_id(stype: str, subject: str, cap_key: str, window_start: int, ratio: float) -> str:
    return stable_id("cap", stype, subject, cap_key, window_start, float(ratio))


def window_record_id(stype: str, subject: str, size: str, start: int, revision: int) -> str:
    return stable_id("window", stype, subject, size, start, revision)


def marker_alert_id(
    kind: str, stype: str, subject: str, details: Sequence[tuple[str, str]], day_start: int
) -> str:
    return stable_id(kind, stype, subject, *sorted(details), day_start)


@dataclass
class Totals:
    calls: int = 0
    records: int = 0
    endpoints: dict[str, list[int]] = field(default_factory=dict)

    def add(self, ev: Event) -> None:
        self.calls += 1
        self.records += int(ev.get("records", 0))
        cell = self.endpoints.setdefault(ev.get("endpoint") or "(none)", [0, 0])
        cell[0] += 1
        cell[1] += int(ev.get("records", 0))

    def as_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "records": self.records,
            "endpoints": {ep: {"calls": c, "records": r} for ep, (c, r) in self.endpoints.items()},
        }


WindowKey = tuple[str, str, str, int]  # (subject_type, subject, window size name, start ms)


def expected_totals(
    events: Iterable[Event], sizes: dict[str, int], org_of: dict[str, str]
) -> dict[WindowKey, Totals]:
    """Exact totals per (subject, fixed window) of the distinct (app_id, id) events."""
    out: dict[WindowKey, Totals] = {}
    for ev, stype, subject in _subjects(events, org_of):
        for name, size in sizes.items():
            start = ev["time"] - ev["time"] % size
            out.setdefault((stype, subject, name, start), Totals()).add(ev)
    return out


def window_key(value: dict[str, Any]) -> WindowKey:
    return (
        value["subject_type"],
        value["subject"],
        value["window"]["size"],
        ms(value["window"]["start"].replace("Z", "+00:00")),
    )


def duplicates(items: Iterable[Any]) -> dict[Any, int]:
    return {k: n for k, n in Counter(items).items() if n > 1}


@dataclass(frozen=True)
class CapSpec:
    """The test's own description of a cap, to predict its alerts and window `caps` entries."""

    key: str  # e.g. "tier:std:calls-15m", "org:acme:records-1h"
    metric: str  # "calls" or "records"
    size: str  # window name, e.g. "15m"
    size_ms: int
    limit: int
    ratios: tuple[float, ...] = (0.8, 1.0)
    severities: tuple[str, ...] | None = None  # default: critical from 1.0, else warning
    endpoint_prefix: str | None = None
    status_range: tuple[int, int] | None = None

    def counts(self, ev: Event) -> bool:
        status = ev.get("status", 200)
        if self.status_range is not None and not (
            self.status_range[0] <= status <= self.status_range[1]
        ):
            return False
        if self.endpoint_prefix is not None:
            return str(ev.get("endpoint") or "").startswith(self.endpoint_prefix)
        return True

    def amount(self, ev: Event) -> int:
        return 1 if self.metric == "calls" else int(ev.get("records", 0))

    def levels(self) -> list[tuple[float, str, int]]:
        out = []
        for i, ratio in enumerate(self.ratios):
            severity = (
                self.severities[i]
                if self.severities is not None
                else ("critical" if ratio >= 1.0 else "warning")
            )
            out.append((ratio, severity, max(1, math.ceil(ratio * self.limit - 1e-9))))
        return out


@dataclass(frozen=True)
class ExpectedAlert:
    id: str
    stype: str
    subject: str
    cap: CapSpec
    window_start: int
    ratio: float
    severity: str
    level: int
    used: int  # exact when events were applied in the order given, else the first sum >= level
    event_id: str
    crossed_at: int


CapsOf = Callable[[str, str], Sequence[CapSpec]]


def cap_usage(
    events: Iterable[Event], caps_of: CapsOf, org_of: dict[str, str]
) -> dict[tuple[str, str, str, int], int]:
    """(subject_type, subject, cap key, window start) -> usage, over distinct events."""
    out: dict[tuple[str, str, str, int], int] = {}
    for ev, stype, subject in _subjects(events, org_of):
        for cap in caps_of(stype, subject):
            if cap.counts(ev):
                start = ev["time"] - ev["time"] % cap.size_ms
                k = (stype, subject, cap.key, start)
                out[k] = out.get(k, 0) + cap.amount(ev)
    return out


def expected_cap_alerts(
    events: Iterable[Event], caps_of: CapsOf, org_of: dict[str, str]
) -> dict[str, ExpectedAlert]:
    """Every threshold the distinct events reach, by alert id. `used`, `event_id` and
    `crossed_at` are exact when the meter applies the events in the order given."""
    usage: dict[tuple[str, str, str, int], int] = {}
    out: dict[str, ExpectedAlert] = {}
    for ev, stype, subject in _subjects(events, org_of):
        for cap in caps_of(stype, subject):
            if not cap.counts(ev):
                continue
            start = ev["time"] - ev["time"] % cap.size_ms
            k = (stype, subject, cap.key, start)
            before = usage.get(k, 0)
            after = usage[k] = before + cap.amount(ev)
            for ratio, severity, level in cap.levels():
                if before < level <= after:
                    aid = cap_alert_id(stype, subject, cap.key, start, ratio)
                    out[aid] = ExpectedAlert(
                        aid, stype, subject, cap, start, ratio, severity, level, after,
                        ev["id"], ev["time"],
                    )  # fmt: skip
    return out


def expected_feed(
    events: Iterable[Event], caps_of: CapsOf, org_of: dict[str, str]
) -> dict[str, tuple[int, int, str]]:
    """The quota feed's last word per key `<type>:<subject>|<cap>`: (start of the newest
    window in which the subject had any event, the cap's usage there, its state)."""
    events = list(events)
    usage = cap_usage(events, caps_of, org_of)
    newest: dict[tuple[str, str, CapSpec], int] = {}
    for ev, stype, subject in _subjects(events, org_of):
        for cap in caps_of(stype, subject):
            start = ev["time"] - ev["time"] % cap.size_ms
            newest[stype, subject, cap] = max(start, newest.get((stype, subject, cap), start))
    out = {}
    for (stype, subject, cap), start in newest.items():
        used = usage.get((stype, subject, cap.key, start), 0)
        state = (
            "exceeded" if used >= cap.limit
            else "warning" if used >= min(level for _, _, level in cap.levels())
            else "ok"
        )  # fmt: skip
        out[f"{stype}:{subject}|{cap.key}"] = (start, used, state)
    return out


def _subjects(events: Iterable[Event], org_of: dict[str, str]) -> Iterable[tuple[Event, str, str]]:
    seen: set[tuple[str, str]] = set()
    for ev in events:
        if (ev["app_id"], ev["id"]) in seen:
            continue
        seen.add((ev["app_id"], ev["id"]))
        yield ev, "app", ev["app_id"]
        org = org_of.get(ev["app_id"], ev.get("org_id"))
        if org:
            yield ev, "org", org


def latest_windows(values: Iterable[dict[str, Any]]) -> dict[WindowKey, dict[str, Any]]:
    """The highest revision of each window."""
    out: dict[WindowKey, dict[str, Any]] = {}
    for v in values:
        k = window_key(v)
        if k not in out or v["revision"] > out[k]["revision"]:
            out[k] = v
    return out


def totals_of(values: Iterable[dict[str, Any]]) -> dict[WindowKey, dict[str, Any]]:
    """{window: {calls, records, endpoints}} of the latest revision of each window."""
    return {
        k: {"calls": v["calls"], "records": v["records"], "endpoints": v["endpoints"]}
        for k, v in latest_windows(values).items()
    }


def describe_differences(
    got: dict[WindowKey, dict[str, Any]], want: dict[WindowKey, dict[str, Any]], limit: int = 8
) -> str:
    """A short account of how window totals differ (calls and records per window)."""
    lines = []
    for k in sorted(set(got) | set(want), key=str):
        g, w = got.get(k), want.get(k)
        if g != w:
            gc = "missing" if g is None else f"{g['calls']} calls/{g['records']} records"
            wc = "none" if w is None else f"{w['calls']} calls/{w['records']} records"
            if g is not None and w is not None and gc == wc:
                gc, wc = f"endpoints {g.get('endpoints')}", f"{w.get('endpoints')}"
            lines.append(f"  {k[0]} {k[1]} {k[2]} {iso(k[3])}: got {gc}, want {wc}")
    head = f"{len(lines)} of {len(want)} windows differ"
    return "\n".join([head, *lines[:limit], *(["  ..."] if len(lines) > limit else [])])

"""Meter's outputs against a scenario's truth: window totals (the highest revision of each window)
and alerts (each expected id exactly once), with a readable report of every difference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meter.core.errors import EventError
from meter.core.events import parse_time
from meter.sim.truth import ExpectedAlert, Truth, WindowTotal

WindowKey = tuple[str, str, str, int]  # subject_type, subject, window name, start ms


@dataclass
class WrongWindow:
    """A published window whose totals differ from the truth."""

    expected: WindowTotal
    calls: int
    records: int
    revision: int


@dataclass
class WrongAlert:
    """An alert with an expected id but other facts (kind, severity, subject, cap...)."""

    expected: ExpectedAlert
    got: dict[str, Any]


@dataclass
class Comparison:
    """The differences between meter's outputs and the truth; `ok` when there are none."""

    windows_expected: int = 0
    windows_seen: int = 0
    windows_matched: int = 0
    alerts_expected: int = 0
    alert_records: int = 0
    missing_windows: list[WindowTotal] = field(default_factory=list)
    wrong_windows: list[WrongWindow] = field(default_factory=list)
    unexpected_windows: list[dict[str, Any]] = field(default_factory=list)
    missing_alerts: list[ExpectedAlert] = field(default_factory=list)
    unexpected_alerts: list[dict[str, Any]] = field(default_factory=list)
    duplicate_alerts: dict[str, int] = field(default_factory=dict)
    wrong_alerts: list[WrongAlert] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.missing_windows
            or self.wrong_windows
            or self.unexpected_windows
            or self.missing_alerts
            or self.unexpected_alerts
            or self.duplicate_alerts
            or self.wrong_alerts
        )

    def summary(self, limit: int = 5) -> str:
        """A few lines for people: the verdict, the counts, and up to `limit` examples of each
        kind of difference."""
        verdict = "OK: meter matches the truth" if self.ok else "MISMATCH: meter differs"
        lines = [
            verdict,
            f"  windows: {self.windows_matched:,} of {self.windows_expected:,} expected closed "
            f"windows match ({self.windows_seen:,} windows published)",
            f"  alerts: {self.alert_records:,} published, {self.alerts_expected:,} expected",
        ]
        sections: list[tuple[str, list[str]]] = [
            ("missing windows", [_window(w) for w in self.missing_windows]),
            (
                "wrong window totals",
                [
                    f"{_window(w.expected)}: got calls {w.calls} records {w.records} "
                    f"(revision {w.revision})"
                    for w in self.wrong_windows
                ],
            ),
            ("unexpected windows", [_record(r) for r in self.unexpected_windows]),
            ("missing alerts", [_alert(a) for a in self.missing_alerts]),
            ("unexpected alerts", [_record(r) for r in self.unexpected_alerts]),
            (
                "duplicate alert ids",
                [f"{i} published {n} times" for i, n in sorted(self.duplicate_alerts.items())],
            ),
            (
                "alerts with wrong facts",
                [f"{_alert(w.expected)} but got {_record(w.got)}" for w in self.wrong_alerts],
            ),
        ]
        for title, entries in sections:
            if entries:
                lines.append(f"  {title}: {len(entries):,}")
                lines.extend(f"    {e}" for e in entries[:limit])
                if len(entries) > limit:
                    lines.append(f"    ... and {len(entries) - limit:,} more")
        return "\n".join(lines)


def _window(w: WindowTotal) -> str:
    return (
        f"{w.subject_type}:{w.subject} {w.window} @{w.start_ms} "
        f"(calls {w.calls}, records {w.records})"
    )


def _alert(a: ExpectedAlert) -> str:
    what = a.cap if a.cap is not None else a.kind
    return f"{a.id} {a.severity} {a.subject_type}:{a.subject} {what} @{a.window_start}"


def _record(r: Mapping[str, Any]) -> str:
    keys = ("id", "kind", "severity", "subject_type", "subject", "cap", "threshold", "window")
    return str({k: r[k] for k in keys if k in r})


def _window_key(record: Mapping[str, Any]) -> WindowKey:
    window = record["window"]
    return (
        str(record["subject_type"]),
        str(record["subject"]),
        str(window["size"]),
        parse_time(window["start"]),
    )


def compare(
    truth: Truth,
    window_records: Iterable[Mapping[str, Any]],
    alert_records: Iterable[Mapping[str, Any]],
    *,
    grace_ms: int = 60_000,
    closed_until_ms: int | None = None,
) -> Comparison:
    """Compare the JSON values read from `usage-windows` and `usage-alerts` with the truth.

    Windows: the highest revision of each published window must have the truth's totals; every
    window that has closed must be published: all of them by default (once every input
    partition is idle, meter closes every window), or those that end a grace (`grace_ms`, the
    worker's) before `closed_until_ms`. Alerts: every expected id exactly once, with the expected
    facts; no others.
    """
    out = Comparison()
    latest: dict[WindowKey, Mapping[str, Any]] = {}
    for record in window_records:
        key = _window_key(record)
        held = latest.get(key)
        if held is None or int(record["revision"]) > int(held["revision"]):
            latest[key] = record
    out.windows_seen = len(latest)
    expected: dict[WindowKey, WindowTotal] = {}
    for row in truth.windows:
        key = (row.subject_type, row.subject, row.window, row.start_ms)
        expected[key] = row
        got = latest.get(key)
        must = closed_until_ms is None or row.end_ms + grace_ms <= closed_until_ms
        out.windows_expected += must
        if got is None:
            if must:
                out.missing_windows.append(row)
        elif int(got["calls"]) != row.calls or int(got["records"]) != row.records:
            out.wrong_windows.append(
                WrongWindow(row, int(got["calls"]), int(got["records"]), int(got["revision"]))
            )
        else:
            out.windows_matched += must
    out.unexpected_windows = [dict(r) for k, r in sorted(latest.items()) if k not in expected]

    wanted = {a.id: a for a in truth.alerts}
    out.alerts_expected = len(wanted)
    seen: dict[str, int] = {}
    for record in alert_records:
        out.alert_records += 1
        alert_id = str(record["id"])
        seen[alert_id] = seen.get(alert_id, 0) + 1
        if seen[alert_id] > 1:
            continue
        want = wanted.get(alert_id)
        if want is None:
            out.unexpected_alerts.append(dict(record))
        elif not _same_facts(want, record):
            out.wrong_alerts.append(WrongAlert(want, dict(record)))
    out.duplicate_alerts = {i: n for i, n in seen.items() if n > 1}
    out.missing_alerts = [a for i, a in sorted(wanted.items()) if i not in seen]
    return out


def _same_facts(want: ExpectedAlert, got: Mapping[str, Any]) -> bool:
    window = got.get("window") or {}
    try:
        start = parse_time(window.get("start"))
    except EventError:
        return False
    return (
        got.get("kind") == want.kind
        and got.get("severity") == want.severity
        and got.get("subject_type") == want.subject_type
        and got.get("subject") == want.subject
        and got.get("cap") == want.cap
        and got.get("threshold") == want.threshold
        and start == want.window_start
    )

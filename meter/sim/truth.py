"""The ground truth of a scenario, computed from exactly what was sent and independently of meter's
ledger: final totals per subject and window, the alerts that must fire (with their ids), and counts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from meter.core.durations import DAY_MS
from meter.core.outputs import stable_id
from meter.core.policy import Cap, Policy
from meter.core.windows import WindowSpec
from meter.sim import SimulationError
from meter.sim.scenario import DISORDER, FLUSH, LATE, MARKER, Item

_PRUNE_BUCKET_MS = 3_600_000
_ID_MEMORY_MS = 26 * 3_600_000  # a repeat must come within this much of the original's time


class WindowTotal(NamedTuple):
    """Final totals of one subject in one window; JSON: a list in this field order."""

    subject_type: str
    subject: str
    window: str
    start_ms: int
    end_ms: int
    calls: int
    records: int


class ExpectedAlert(NamedTuple):
    """An alert meter must publish exactly once."""

    id: str
    kind: str
    severity: str
    subject_type: str
    subject: str
    cap: str | None
    threshold: float | None
    window_start: int


@dataclass
class Truth:
    """What meter must report for a scenario; see `TruthBuilder` and `write_truth`."""

    scenario: dict[str, Any]
    sent: dict[str, Any]
    windows: list[WindowTotal]
    alerts: list[ExpectedAlert]

    def alert_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for alert in self.alerts:
            out[alert.kind] = out.get(alert.kind, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "sent": self.sent,
            "windows": [list(w) for w in self.windows],
            "alerts": [a._asdict() for a in self.alerts],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Truth:
        return cls(
            scenario=doc["scenario"],
            sent=doc["sent"],
            windows=[WindowTotal(*row) for row in doc["windows"]],
            alerts=[ExpectedAlert(**a) for a in doc["alerts"]],
        )


def write_truth(truth: Truth, path: str | Path) -> None:
    """Write compactly (one line per window row would be larger: rows are plain lists)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(truth.to_json(), separators=(",", ":")) + "\n")
    tmp.replace(p)


def load_truth(path: str | Path) -> Truth:
    """Read a truth file written by `write_truth` (or `meter simulate --truth`)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SimulationError(f"cannot read truth file {path}: {exc}") from exc
    return Truth.from_json(doc)


def _level(ratio: float, limit: int) -> int:
    return max(1, math.ceil(ratio * limit - 1e-9))


class _Route:
    """The rows one (app, claimed org) pair counts into, valid for event times in [lo, hi).

    Counts wait in `pending` (and `fpending` for filtered caps) until the route moves to other
    windows: one addition per event instead of one per window and subject."""

    __slots__ = (
        "filtered", "fpending", "hi", "known", "lo", "matching", "org", "pending", "rows",
        "targets",
    )  # fmt: skip

    def __init__(self, policy: Policy, specs: tuple[WindowSpec, ...], app: str, claim: str | None):
        self.org = policy.org_of(app, claim)
        self.known = policy.known_app(app)
        subjects = [("app", app, policy.app_caps(app))]
        if self.org is not None:
            subjects.append(("org", self.org, policy.org_caps(self.org)))
        self.targets: list[tuple[str, str, WindowSpec]] = []
        self.filtered: list[tuple[int, Cap]] = []
        for stype, subject, caps in subjects:
            for spec in specs:
                self.filtered.extend(
                    (len(self.targets), c)
                    for c in caps
                    if c.filtered and c.window.name == spec.name
                )
                self.targets.append((stype, subject, spec))
        # Placeholders that hold no time, so the first event locates every row.
        self.rows: list[list[Any]] = [[1 << 62, 0] for _ in self.targets]
        self.lo, self.hi = 0, 0
        self.pending = [0, 0]
        self.fpending = [[0, 0] for _ in self.filtered]
        self.matching: dict[tuple[str, int], tuple[int, ...]] = {}

    def match(self, endpoint: str, status: int) -> tuple[int, ...]:
        """Which filtered caps count a call to `endpoint` with `status` (remembered)."""
        found = tuple(
            j for j, (_, cap) in enumerate(self.filtered) if cap.matches(endpoint, status)
        )
        self.matching[(endpoint, status)] = found
        return found

    def settle(self) -> None:
        """Add the pending counts to the rows."""
        calls, records = self.pending
        if calls:
            for row in self.rows:
                row[2] += calls
                row[3] += records
            self.pending = [0, 0]
        for (i, cap), cell in zip(self.filtered, self.fpending, strict=True):
            if cell[0]:
                counts = self.rows[i][4].setdefault(cap.key, [0, 0])
                counts[0] += cell[0]
                counts[1] += cell[1]
                cell[0] = cell[1] = 0


class TruthBuilder:
    """Folds sent items (in send order) into the truth. Counts each (app_id, id) once."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.specs: tuple[WindowSpec, ...] = policy.windows
        # (subject_type, subject, window, start) -> [start, end, calls, records, {cap: [c, r]}]
        self.rows: dict[tuple[str, str, str, int], list[Any]] = {}
        self.routes: dict[tuple[str, str | None], _Route] = {}
        self.markers: dict[str, ExpectedAlert] = {}
        self.seen: dict[int, set[tuple[str, str]]] = {}
        self.horizon = -(1 << 62)
        self.sent: dict[str, int] = dict.fromkeys(
            ("events", "calls", "duplicates", "records", "malformed", "late", "out_of_order",
             "unknown_app_events", "restricted_events", "flush"), 0,
        )  # fmt: skip
        self.malformed_reasons: dict[str, int] = {}

    def add_all(self, items: Iterable[Item]) -> TruthBuilder:
        for item in items:
            self.add(item)
        return self

    def add(self, item: Item) -> None:
        sent = self.sent
        ev = item.event
        if ev is None:
            bad = item.bad
            if bad is None:
                raise SimulationError("an item has neither an event nor a malformed record")
            sent["malformed"] += 1
            self.malformed_reasons[bad.reason] = self.malformed_reasons.get(bad.reason, 0) + 1
            return
        sent["events"] += 1
        app, t = ev.app_id, item.time_ms
        if not self._first(app, ev.id, t, item.send_ms):
            sent["duplicates"] += 1
            return
        records, status, claim = ev.records, ev.status, ev.org_id
        route = self.routes.get((app, claim))
        if route is None:
            route = self.routes[(app, claim)] = _Route(self.policy, self.specs, app, claim)
        sent["calls"] += 1
        sent["records"] += records
        flags = item.flags
        if flags:
            sent["late"] += bool(flags & LATE)
            sent["out_of_order"] += bool(flags & DISORDER)
            sent["flush"] += bool(flags & FLUSH)
        if not route.lo <= t < route.hi:
            self._locate(route, t)
        pending = route.pending
        pending[0] += 1
        pending[1] += records
        if route.filtered:
            hits = route.matching.get((ev.endpoint, status))
            if hits is None:
                hits = route.match(ev.endpoint, status)
            for j in hits:
                cell = route.fpending[j]
                cell[0] += 1
                cell[1] += records
        if not route.known:
            sent["unknown_app_events"] += 1
            self._marker("unknown_app", "warning", "app", app, {}, t)
        rule = None
        if ev.recipient is not None:
            rule = self.policy.restricted_violation(route.org, ev.recipient, t)
        if rule is not None:
            sent["restricted_events"] += 1
            details = {"app_id": app, "recipient": rule.recipient, "rule": rule.requires}
            org = route.org
            stype, subject = ("org", org) if org is not None else ("app", app)
            self._marker("restricted_use", rule.severity, stype, subject, details, t)
        elif flags & MARKER and route.known:
            raise SimulationError(f"event {ev.id} was flagged as raising a marker alert")

    def _locate(self, route: _Route, t: int) -> None:
        """Point the route at the rows of the windows that hold `t` (most often, only the
        shortest window has moved on)."""
        route.settle()
        rows = route.rows
        lo, hi = -(1 << 62), 1 << 62
        for i, (stype, subject, spec) in enumerate(route.targets):
            row = rows[i]
            if not row[0] <= t < row[1]:
                w = spec.bucket(t)
                key = (stype, subject, spec.name, w.start_ms)
                found = self.rows.get(key)
                if found is None:
                    found = self.rows[key] = [w.start_ms, w.end_ms, 0, 0, {}]
                row = rows[i] = found
            lo, hi = max(lo, row[0]), min(hi, row[1])
        route.lo, route.hi = lo, hi

    def _first(self, app: str, event_id: str, t: int, send_ms: int) -> bool:
        """Whether (app, id) is new. Ids are kept for a day of event time behind the send
        position, so memory stays bounded; an older event could not be judged: an error."""
        horizon = send_ms - _ID_MEMORY_MS
        if horizon - self.horizon >= _PRUNE_BUCKET_MS:
            self.horizon = horizon
            for b in [b for b in self.seen if (b + 1) * _PRUNE_BUCKET_MS <= horizon]:
                del self.seen[b]
        if t < self.horizon:
            raise SimulationError(f"event {event_id} was sent more than a day after its time")
        b = t // _PRUNE_BUCKET_MS
        bucket = self.seen.get(b)
        if bucket is None:
            bucket = self.seen[b] = set()
        key = (app, event_id)
        if key in bucket:
            return False
        bucket.add(key)
        return True

    def _marker(
        self,
        kind: str,
        severity: str,
        stype: str,
        subject: str,
        details: dict[str, str],
        t: int,
    ) -> None:
        day = t - t % DAY_MS
        alert_id = stable_id(kind, stype, subject, *sorted(details.items()), day)
        if alert_id not in self.markers:
            alert = ExpectedAlert(alert_id, kind, severity, stype, subject, None, None, day)
            self.markers[alert_id] = alert

    def build(self, scenario: dict[str, Any]) -> Truth:
        """The truth so far; `scenario` is recorded as given (parameters, for the reader)."""
        for route in self.routes.values():
            route.settle()
        windows: list[WindowTotal] = []
        alerts = list(self.markers.values())
        caps: dict[tuple[str, str, str], list[Cap]] = {}
        for route in self.routes.values():
            for stype, subject, spec in route.targets:
                if (stype, subject, spec.name) not in caps:
                    every = (
                        self.policy.app_caps(subject)
                        if stype == "app"
                        else self.policy.org_caps(subject)
                    )
                    caps[(stype, subject, spec.name)] = [
                        c for c in every if c.window.name == spec.name
                    ]
        for (stype, subject, name, start), (_, end, calls, records, fc) in self.rows.items():
            windows.append(WindowTotal(stype, subject, name, start, end, calls, records))
            for cap in caps.get((stype, subject, name), ()):
                counts = fc.get(cap.key, (0, 0)) if cap.filtered else (calls, records)
                used = counts[0] if cap.metric == "calls" else counts[1]
                for th in cap.thresholds:
                    if used >= _level(th.ratio, cap.limit):
                        alert_id = stable_id("cap", stype, subject, cap.key, start, th.ratio)
                        alerts.append(
                            ExpectedAlert(
                                alert_id,
                                "cap",
                                th.severity,
                                stype,
                                subject,
                                cap.key,
                                th.ratio,
                                start,
                            )
                        )
        windows.sort()
        alerts.sort()
        sent: dict[str, Any] = dict(self.sent)
        sent["malformed_reasons"] = dict(sorted(self.malformed_reasons.items()))
        return Truth(
            scenario=scenario,
            sent=sent,
            windows=windows,
            alerts=alerts,
        )

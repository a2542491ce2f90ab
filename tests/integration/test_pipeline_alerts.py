"""End to end: alerts are published exactly once, with exactly the predicted content.

Events of one organisation share one input partition here, so the meter applies them in the
order sent and every field of every alert (usage, crossing event, time) is predictable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.harness.data import DAY_MS, HOUR_MS, MIN_MS, Event, event, header, iso, ms, values_of
from tests.harness.deployment import Deployment
from tests.harness.oracle import (
    CapSpec,
    ExpectedAlert,
    duplicates,
    expected_cap_alerts,
    expected_totals,
    marker_alert_id,
    totals_of,
)
from tests.harness.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


CAP_POLICY = """
version: 1
tiers:
  std:
    caps:
      - {id: calls-15m, metric: calls, window: 15m, limit: 10}
orgs:
  acme:
    caps:
      - id: records-1h
        metric: records
        window: 1h
        limit: 1000
        thresholds: [0.5, {at: 0.9, severity: major}, 1.0, 1.5]
apps:
  acme-web: {org: acme, tier: std}
  acme-batch:
    org: acme
    tier: std
    caps:
      - {id: errors-1h, metric: calls, window: 1h, limit: 3, status: ["5xx"], thresholds: [1.0]}
"""
ORG_OF = {"acme-web": "acme", "acme-batch": "acme"}
CALLS_15M = CapSpec("tier:std:calls-15m", "calls", "15m", 15 * MIN_MS, 10)
ERRORS_1H = CapSpec(
    "app:acme-batch:errors-1h", "calls", "1h", HOUR_MS, 3, (1.0,), status_range=(500, 599)
)
RECORDS_1H = CapSpec(
    "org:acme:records-1h", "records", "1h", HOUR_MS, 1000, (0.5, 0.9, 1.0, 1.5),
    severities=("warning", "major", "critical", "critical"),
)  # fmt: skip


def caps_of(stype: str, subject: str) -> Sequence[CapSpec]:
    if stype == "org":
        return (RECORDS_1H,)
    return (CALLS_15M, ERRORS_1H) if subject == "acme-batch" else (CALLS_15M,)


def alert_json(e: ExpectedAlert) -> dict[str, Any]:
    """The full alert the meter must publish, except `emitted_at` (wall clock)."""
    return {
        "id": e.id,
        "kind": "cap",
        "severity": e.severity,
        "subject_type": e.stype,
        "subject": e.subject,
        "org_id": "acme",
        "cap": e.cap.key,
        "metric": e.cap.metric,
        "window": {
            "size": e.cap.size,
            "start": iso(e.window_start),
            "end": iso(e.window_start + e.cap.size_ms),
        },
        "limit": e.cap.limit,
        "used": e.used,
        "threshold": e.ratio,
        "utilization": round(e.used / e.cap.limit, 6),
        "crossed_at": iso(e.crossed_at),
        "late": False,
        "event_id": e.event_id,
    }


def test_each_threshold_alerts_exactly_once_with_exact_content(
    deployments: Callable[..., Deployment],
) -> None:
    d = deployments(CAP_POLICY, partitions=2)
    worker = d.start_worker()
    h10, h11 = ms("2022-03-01T10:00"), ms("2022-03-01T11:00")
    s = 1000
    sent: list[Event] = []

    def send(events: list[Event]) -> None:
        d.send_events(events, keys=[b"acme"] * len(events))  # one partition: order kept
        sent.extend(events)

    # acme-web: 12 calls of 50 records; calls cross 8 and 10, org records cross 500 at the 10th.
    send([event(f"w{i:02d}", h10 + i * s, "acme-web", records=50) for i in range(1, 13)])
    # A re-delivered crossing event must not count nor alert again.
    send([event("w10", h10 + 10 * s, "acme-web", records=50)])
    # One call of 2000 records jumps over three org thresholds at once: three alerts.
    send([event("big", h10 + 60 * s, "acme-batch", records=2000)])
    # 5xx calls: the filtered errors cap (limit 3) is crossed by the third.
    send([event(f"err{i}", h10 + (120 + i) * s, "acme-batch", status=503) for i in range(1, 5)])
    # The next 15-minute window has its own alerts (and closes the first one).
    send([event(f"n{i}", h10 + 16 * MIN_MS + i * s, "acme-web") for i in range(1, 9)])
    # Beyond the limit in the next hour: the four org thresholds again, once each.
    send([event("big2", h11 + 30 * s, "acme-batch", records=1500)])
    # A duplicate of a counted event whose window has closed: neither amendment nor alert.
    send([event("w11", h10 + 11 * s, "acme-web", records=50)])
    d.wait_consumed()
    d.push(h10 + DAY_MS, ["acme-web"])  # close everything

    expected = expected_cap_alerts(sent, caps_of, ORG_OF)
    assert len(expected) == 12  # 2 + 1 + 3 + 1 + 1 + 4, by hand
    records = d.alerts(expect=len(expected), timeout=90, settle=4.0)
    alerts = values_of(records)
    assert not duplicates(a["id"] for a in alerts)
    assert Counter(a["id"] for a in alerts) == Counter(expected.keys())
    for rec, a in zip(records, alerts, strict=True):
        assert header(rec, "meter-id") == a["id"].encode()
        assert rec.key == f"{a['subject_type']}:{a['subject']}".encode()
        assert {k: v for k, v in a.items() if k != "emitted_at"} == alert_json(expected[a["id"]])
    big = [a for a in alerts if a["event_id"] == "big"]
    assert sorted(a["threshold"] for a in big) == [0.9, 1.0, 1.5]
    assert {a["used"] for a in big} == {2600}

    # The window totals agree (w10 and w11 counted once), then a clean restart must publish
    # nothing again: its outboxes were emptied when the sends were acknowledged.
    want = {
        k: t.as_json()
        for k, t in expected_totals(sent, {"15m": 15 * MIN_MS, "1h": HOUR_MS}, ORG_OF).items()
    }
    windows = d.settled_windows(want.keys(), timeout=60)
    assert totals_of(windows) == want
    assert all(w["revision"] == 0 for w in windows)
    worker.stop()

    d.start_worker(data_dir=worker.data_dir)
    d.push(h10 + 2 * DAY_MS, ["acme-web"])
    # This push closes the windows the first opened: then the restarted worker surely runs.
    pushed = ("app", "acme-web", "15m", h10 + DAY_MS)
    wait_until(
        lambda: pushed in totals_of(values_of(d.windows(expect=None))),
        60,
        what="the restarted worker to close the push's windows",
        abort=d.died,
    )
    again = values_of(d.alerts(expect=len(expected), timeout=30, settle=3.0))
    assert Counter(a["id"] for a in again) == Counter(expected.keys()), (
        "alerts re-sent after restart"
    )
    d.stop_all()


MARKER_POLICY = """
version: 1
tiers:
  std:
    caps:
      - {id: calls-15m, metric: calls, window: 15m, limit: 100}
orgs:
  acme: {name: Acme}
  civic:
    name: Civic
    government_notice: 2022-03-01T12:00:00Z
apps:
  acme-web: {org: acme, tier: std}
  acme-api: {org: acme, tier: std}
  civic-web: {org: civic, tier: std}
restricted_uses:
  - {recipient: government, requires: notice, severity: critical}
"""


def test_unknown_app_and_restricted_use_alert_once_per_day(
    deployments: Callable[..., Deployment],
) -> None:
    d = deployments(MARKER_POLICY, partitions=1)  # one partition: one watermark, order kept
    d.start_worker()
    day1, day2 = ms("2022-03-01T00:00"), ms("2022-03-02T00:00")
    h = HOUR_MS
    events = [
        # Unknown apps: counted, one unknown_app alert per app per UTC day.
        event("g1", day1 + 9 * h, "ghost"),
        event("g2", day1 + 9 * h + 1, "ghost"),
        event("g3", day1 + 10 * h, "ghost", recipient="press"),
        event("c1", day1 + 9 * h, "claimed", org="acme"),  # unknown app, org from the event
        event("c2", day1 + 11 * h, "claimed", org="acme"),
        # Government use without a notice: one restricted_use alert per org, app and day.
        event("r1", day1 + 9 * h, "acme-web", recipient="government"),
        event("r2", day1 + 9 * h + 5, "acme-web", recipient="Government"),  # case-insensitive
        event("r3", day1 + 10 * h, "acme-api", recipient="government"),
        event("r4", day1 + 10 * h, "acme-web", recipient="press"),  # no rule: no alert
        # Civic's notice is on record from 12:00 that day: before it, an alert; after, none.
        event("v1", day1 + 13 * h, "civic-web", recipient="government"),
        event("v2", day1 + 11 * h, "civic-web", recipient="government"),
        event("v3", day1 + 14 * h, "civic-web", recipient="government"),
    ]
    # Stage 1 may regroup events by organisation: the next day is sent once this one is
    # consumed, so no organisation's watermark reaches the next day before its own events.
    d.send_events(events, keys=[b"k"] * len(events))
    d.wait_consumed()
    day2_events = [
        # The next day: alerts again, once.
        event("g4", day2 + 9 * h, "ghost"),
        event("g5", day2 + 10 * h, "ghost"),
        event("r5", day2 + 9 * h, "acme-web", recipient="government"),
        event("r6", day2 + 9 * h + 1, "acme-web", recipient="government"),
    ]
    d.send_events(day2_events, keys=[b"k"] * len(day2_events))
    events += day2_events
    d.wait_consumed()
    d.push(day2 + 3 * DAY_MS, ["acme-web"])

    def restricted(org: str, app: str, day: int) -> str:
        details = [("app_id", app), ("recipient", "government"), ("rule", "notice")]
        return marker_alert_id("restricted_use", "org", org, details, day)

    want = {
        marker_alert_id("unknown_app", "app", "ghost", [], day1): ("unknown_app", "g1", None),
        marker_alert_id("unknown_app", "app", "claimed", [], day1): ("unknown_app", "c1", "acme"),
        marker_alert_id("unknown_app", "app", "ghost", [], day2): ("unknown_app", "g4", None),
        restricted("acme", "acme-web", day1): ("restricted_use", "r1", "acme"),
        restricted("acme", "acme-api", day1): ("restricted_use", "r3", "acme"),
        restricted("civic", "civic-web", day1): ("restricted_use", "v2", "civic"),
        restricted("acme", "acme-web", day2): ("restricted_use", "r5", "acme"),
    }
    records = d.alerts(expect=len(want), timeout=90, settle=4.0)
    alerts = values_of(records)
    assert Counter(a["id"] for a in alerts) == Counter(want.keys())
    for rec, a in zip(records, alerts, strict=True):
        kind, first_event, org = want[a["id"]]
        assert header(rec, "meter-id") == a["id"].encode()
        assert (a["kind"], a["event_id"], a["org_id"], a["late"]) == (kind, first_event, org, False)
        assert (a["cap"], a["threshold"], a["limit"]) == (None, None, None)
        assert a["window"]["size"] == "1d"
        if kind == "unknown_app":
            assert (a["subject_type"], a["severity"]) == ("app", "warning")
        else:
            assert (a["subject_type"], a["subject"], a["severity"]) == ("org", org, "critical")
            assert (a["recipient"], a["rule"]) == ("government", "notice")
            assert a["app_id"] == {"r1": "acme-web", "r3": "acme-api", "v2": "civic-web",
                                   "r5": "acme-web"}[first_event]  # fmt: skip

    # Unknown apps are still counted, per app and (when the event names one) per org.
    want_totals = {
        k: t.as_json()
        for k, t in expected_totals(
            events,
            {"15m": 15 * MIN_MS},
            {"acme-web": "acme", "acme-api": "acme", "civic-web": "civic"},
        ).items()
    }
    windows = d.settled_windows(want_totals.keys(), timeout=60)
    assert totals_of(windows) == want_totals
    assert {k for k in want_totals if k[1] in ("ghost", "claimed")} == {
        ("app", "ghost", "15m", day1 + 9 * h),
        ("app", "ghost", "15m", day1 + 10 * h),
        ("app", "claimed", "15m", day1 + 9 * h),
        ("app", "claimed", "15m", day1 + 11 * h),
        ("app", "ghost", "15m", day2 + 9 * h),
        ("app", "ghost", "15m", day2 + 10 * h),
    }
    d.stop_all()

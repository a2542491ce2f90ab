"""End to end: duplicates, out-of-order events within grace, and late events that amend a closed
window (revision 1, 2, ...), with `late: true` on an alert a late event crosses.

Events go to chosen input partitions and the test waits for the worker to consume each step
before sending the next, so which window is open or closed at each event is known exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.harness.data import (
    DAY_MS,
    HOUR_MS,
    MIN_MS,
    Event,
    dumps,
    event,
    header,
    iso,
    ms,
    values_of,
)
from tests.harness.deployment import Deployment
from tests.harness.oracle import (
    CapSpec,
    WindowKey,
    duplicates,
    expected_cap_alerts,
    expected_totals,
    window_key,
    window_record_id,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

POLICY = """
version: 1
tiers:
  std:
    caps:
      - {id: calls-15m, metric: calls, window: 15m, limit: 10}
orgs:
  o1:
    caps:
      - {id: records-1h, metric: records, window: 1h, limit: 1000}
apps:
  a1: {org: o1, tier: std}
  a2: {org: o1, tier: std}
"""
ORG_OF = {"a1": "o1", "a2": "o1"}
SIZES = {"15m": 15 * MIN_MS, "1h": HOUR_MS}
CALLS_15M = CapSpec("tier:std:calls-15m", "calls", "15m", 15 * MIN_MS, 10)
RECORDS_1H = CapSpec("org:o1:records-1h", "records", "1h", HOUR_MS, 1000)


def caps_of(stype: str, subject: str) -> Sequence[CapSpec]:
    return (CALLS_15M,) if stype == "app" else (RECORDS_1H,)


def totals(events: list[Event], key: WindowKey) -> dict[str, Any]:
    return expected_totals(events, SIZES, ORG_OF)[key].as_json()


def test_duplicates_out_of_order_and_late_amendments(
    deployments: Callable[..., Deployment],
) -> None:
    d = deployments(POLICY, partitions=2)
    d.start_worker()
    t = ms("2022-03-01T10:00")
    s = 1000
    w0, w1 = t, t + 15 * MIN_MS  # the first two 15-minute windows
    applied: list[Event] = []  # every event sent, in the order the meter applies them

    def step(records: list[Event | list[Event]], partition: int) -> None:
        d.send([dumps(r) for r in records], partition=partition)
        for r in records:
            applied.extend(r if isinstance(r, list) else [r])
        d.wait_consumed()

    # Duplicates: re-sent alone, twice inside one batch, and from another partition (and key)
    # with different content; the same id from another app is another event.
    step(
        [
            event("d1", t + 1 * s, "a1", records=100),
            event("d2", t + 2 * s, "a1", records=100),
            event("d3", t + 3 * s, "a1", records=100),
            [
                event("d4", t + 4 * s, "a1", records=100),
                event("d4", t + 4 * s, "a1", records=100),
                event("d5", t + 5 * s, "a1", records=100),
            ],
            event("d1", t + 1 * s, "a1", records=100),
        ],
        partition=0,
    )
    step(
        [
            event("d2", t + 2 * s, "a1", records=100),
            [event("d3", t + 3 * s, "a1", records=999), event("d6", t + 6 * s, "a1", records=100)],
        ],
        partition=1,
    )
    # Out of order while the window is open; g1 moves partition 0 0.5 s past the window's end,
    # and g2 (in the first window, within the 1 s grace) still belongs to revision 0. The first
    # window closes once both input partitions are past its end plus the grace (c1 and c2).
    step(
        [
            event("d1", t + 7 * s, "a2"),
            event("o1", t + 10 * MIN_MS, "a1", records=100),
            event("o2", t + 1 * MIN_MS, "a1", records=100),  # 8th call: the 80% alert
            event("g1", w1 + 500, "a1", records=100),
            event("g2", w1 - 1 * s, "a1", records=100),
            event("c1", w1 + 5 * s, "a1", records=100),
        ],
        partition=0,
    )
    step([event("c2", w1 + 5 * s, "a1")], partition=1)
    before_close = list(applied)
    first = d.windows(expect=3, timeout=60, settle=1.0)
    first_values = values_of(first)
    assert {window_key(v): v["revision"] for v in first_values} == {
        ("app", "a1", "15m", w0): 0,
        ("app", "a2", "15m", w0): 0,
        ("org", "o1", "15m", w0): 0,
    }
    for v in first_values:
        assert {k: v[k] for k in ("calls", "records", "endpoints")} == totals(
            before_close, window_key(v)
        )
    assert next(v for v in first_values if v["subject"] == "a1")["calls"] == 9

    # Late: each event below arrives after its 15-minute window closed.
    step([event("l1", t + 5 * MIN_MS, "a1", records=100)], partition=0)  # a1's 10th: late alert
    after_l1 = list(applied)
    step(
        [
            event("d1", t + 1 * s, "a1", records=100),  # a late duplicate: no amendment
            event("l2", t + 6 * MIN_MS, "a2", records=100),
        ],
        partition=0,
    )
    d.push(t + DAY_MS, ["a1"])  # closes everything else
    counted = list(applied)

    want: dict[tuple[WindowKey, int], dict[str, Any]] = {
        (("app", "a1", "15m", w0), 0): totals(before_close, ("app", "a1", "15m", w0)),
        (("app", "a1", "15m", w0), 1): totals(after_l1, ("app", "a1", "15m", w0)),
        (("app", "a2", "15m", w0), 0): totals(before_close, ("app", "a2", "15m", w0)),
        (("app", "a2", "15m", w0), 1): totals(counted, ("app", "a2", "15m", w0)),
        (("org", "o1", "15m", w0), 0): totals(before_close, ("org", "o1", "15m", w0)),
        (("org", "o1", "15m", w0), 1): totals(after_l1, ("org", "o1", "15m", w0)),
        (("org", "o1", "15m", w0), 2): totals(counted, ("org", "o1", "15m", w0)),
        (("app", "a1", "15m", w1), 0): totals(counted, ("app", "a1", "15m", w1)),
        (("org", "o1", "15m", w1), 0): totals(counted, ("org", "o1", "15m", w1)),
        (("app", "a1", "1h", t), 0): totals(counted, ("app", "a1", "1h", t)),
        (("app", "a2", "1h", t), 0): totals(counted, ("app", "a2", "1h", t)),
        (("org", "o1", "1h", t), 0): totals(counted, ("org", "o1", "1h", t)),
    }
    # By hand, for the record: duplicates dropped, g2 in revision 0, l1 and l2 amend.
    assert [want[(("app", "a1", "15m", w0), r)]["calls"] for r in (0, 1)] == [9, 10]
    assert [want[(("org", "o1", "15m", w0), r)]["calls"] for r in (0, 1, 2)] == [10, 11, 12]
    assert want[(("app", "a1", "1h", t), 0)]["records"] == 1200

    records = d.windows(expect=len(want), timeout=90, settle=3.0)
    got = values_of(records)
    assert not duplicates(v["id"] for v in got)
    assert Counter((window_key(v), v["revision"]) for v in got) == Counter(want.keys())
    for v in got:
        k, rev = window_key(v), v["revision"]
        assert {f: v[f] for f in ("calls", "records", "endpoints")} == want[(k, rev)], (k, rev)
        assert v["id"] == window_record_id(*k, rev)
        assert v["late_events"] == rev  # one late event per amendment here
        assert v["base"] == "complete"

    # Alerts: once each; the one crossed by a late event says so.
    expected = expected_cap_alerts(counted, caps_of, ORG_OF)
    alert_records = d.alerts(expect=len(expected), timeout=60, settle=3.0)
    alerts = values_of(alert_records)
    assert Counter(a["id"] for a in alerts) == Counter(expected.keys())
    summary = {
        (a["subject"], a["threshold"]): (a["used"], a["event_id"], a["late"], a["crossed_at"])
        for a in alerts
    }
    assert summary == {
        ("a1", 0.8): (8, "o2", False, iso(t + 1 * MIN_MS)),
        ("a1", 1.0): (10, "l1", True, iso(t + 5 * MIN_MS)),
        ("o1", 0.8): (800, "o2", False, iso(t + 1 * MIN_MS)),
        ("o1", 1.0): (1000, "g2", False, iso(w1 - 1 * s)),
    }
    for rec, a in zip(alert_records, alerts, strict=True):
        assert header(rec, "meter-id") == a["id"].encode()
        assert a["used"] == expected[a["id"]].used
    d.stop_all()

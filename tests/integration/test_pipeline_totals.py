"""End to end: exact window totals for many apps, orgs, windows and partitions.

A real `meter worker` subprocess reads a few thousand plain events produced with random keys over
four input partitions; the test computes every total itself from what it sent and compares the
window records (revision 0) and the cap alerts field by field.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.harness.data import HOUR_MS, MIN_MS, Event, event, header, iso, ms, values_of
from tests.harness.deployment import Deployment
from tests.harness.oracle import (
    CapSpec,
    cap_usage,
    describe_differences,
    duplicates,
    expected_cap_alerts,
    expected_feed,
    expected_totals,
    window_key,
    window_record_id,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ORGS = ("acme", "globex", "initech")
APPS = {f"{org}-{i}": org for org in ORGS for i in range(1, 5)}  # 12 apps, 3 orgs
SIZES = {"15m": 15 * MIN_MS, "1h": HOUR_MS}

POLICY = """
version: 1
tiers:
  std:
    caps:
      - {id: calls-15m, metric: calls, window: 15m, limit: 10}
      - id: search-1h
        metric: calls
        window: 1h
        limit: 20
        endpoints: ["/search/*"]
        thresholds: [0.5, 1.0]
orgs:
  acme:
    caps:
      - {id: records-1h, metric: records, window: 1h, limit: 1000, status: ["2xx"],
         thresholds: [0.5, 0.8, 1.0]}
  globex:
    caps:
      - {id: records-1h, metric: records, window: 1h, limit: 1000, status: ["2xx"],
         thresholds: [0.5, 0.8, 1.0]}
  initech: {}
apps:
  acme-1: {org: acme, tier: std}
  acme-2: {org: acme, tier: std}
  acme-3: {org: acme, tier: std}
  acme-4: {org: acme, tier: std}
  globex-1: {org: globex, tier: std}
  globex-2: {org: globex, tier: std}
  globex-3: {org: globex, tier: std}
  globex-4: {org: globex, tier: std}
  initech-1: {org: initech, tier: std}
  initech-2: {org: initech, tier: std}
  initech-3: {org: initech, tier: std}
  initech-4: {org: initech}
"""

CALLS_15M = CapSpec("tier:std:calls-15m", "calls", "15m", 15 * MIN_MS, 10)
SEARCH_1H = CapSpec(
    "tier:std:search-1h", "calls", "1h", HOUR_MS, 20, (0.5, 1.0), endpoint_prefix="/search/"
)


def org_records(org: str) -> CapSpec:
    return CapSpec(
        f"org:{org}:records-1h", "records", "1h", HOUR_MS, 1000, (0.5, 0.8, 1.0),
        status_range=(200, 299),
    )  # fmt: skip


def caps_of(stype: str, subject: str) -> Sequence[CapSpec]:
    if stype == "app":
        return () if subject == "initech-4" else (CALLS_15M, SEARCH_1H)
    return (org_records(subject),) if subject in ("acme", "globex") else ()


def test_exact_totals_for_many_apps_windows_and_partitions(
    deployments: Callable[..., Deployment],
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    d = deployments(POLICY, partitions=4)
    worker = d.start_worker()

    # Four phases, each inside one 15-minute window, in random time order within the phase.
    # Every phase is routed before the next is produced: with random keys the four input
    # partitions interleave arbitrarily, and the first event of a later window closes the
    # earlier ones (grace 1s). So revision 0 of every window must be complete and exact.
    phases = ["2022-03-01T10:00", "2022-03-01T10:15", "2022-03-01T10:45", "2022-03-01T11:30"]
    endpoints = ["/search/recent", "/search/all", "/users/lookup", None]
    statuses = [200, 200, 200, 200, 200, 201, 204, 429, 500, 503]
    sent: list[Event] = []
    for p, phase in enumerate(phases):
        t0 = ms(phase)
        batch = [
            event(
                f"p{p}-{i}",
                t0 + rng.randrange(15 * MIN_MS),
                rng.choice(list(APPS)),
                records=rng.randrange(26),
                endpoint=rng.choice(endpoints),
                status=rng.choice(statuses),
            )
            for i in range(600)
        ]
        d.send_events(batch, keys=[f"k{rng.randrange(10**9)}".encode() for _ in batch])
        sent += batch
        d.wait_consumed()

    # A day later on every input partition: the watermark passes every window.
    pushed = d.push(ms("2022-03-02T12:00"), [f"{org}-1" for org in ORGS])

    want = expected_totals(sent, SIZES, APPS)
    assert len(want) == 12 * 4 + 12 * 2 + 3 * 4 + 3 * 2  # every app and org, every window
    records = d.windows(expect=len(want), timeout=120, settle=3.0)
    got = values_of(records)

    assert not duplicates(v["id"] for v in got), "a window record was published twice"
    assert [header(r, "meter-id") for r in records] == [v["id"].encode() for v in got]
    assert all(v["revision"] == 0 for v in got), [v for v in got if v["revision"]]
    assert Counter(window_key(v) for v in got) == Counter(want.keys())
    got_totals = {
        window_key(v): {"calls": v["calls"], "records": v["records"], "endpoints": v["endpoints"]}
        for v in got
    }
    want_totals = {k: t.as_json() for k, t in want.items()}
    assert got_totals == want_totals, describe_differences(got_totals, want_totals)
    assert sum(v["calls"] for v in got if v["subject_type"] == "app") == 2 * len(sent)

    usage = cap_usage(sent, caps_of, APPS)
    for v in got:
        stype, subject, size, start = window_key(v)
        assert v["id"] == window_record_id(stype, subject, size, start, 0)
        assert v["org_id"] == (APPS[subject] if stype == "app" else subject)
        assert v["window"]["end"] == iso(start + SIZES[size])
        assert v["late_events"] == 0
        assert v["base"] == "complete"
        assert sum(e["calls"] for e in v["endpoints"].values()) == v["calls"]
        assert sum(e["records"] for e in v["endpoints"].values()) == v["records"]
        caps_here = [c for c in caps_of(stype, subject) if c.size == size]
        assert sorted(v["caps"], key=lambda c: str(c["cap"])) == sorted(
            (
                {
                    "cap": c.key,
                    "metric": c.metric,
                    "limit": c.limit,
                    "used": (used := usage.get((stype, subject, c.key, start), 0)),
                    "utilization": round(used / c.limit, 6),
                }
                for c in caps_here
            ),
            key=lambda c: str(c["cap"]),
        ), (stype, subject, size, start)

    # Alerts: exactly one per (subject, cap, window, threshold) reached, none other.
    expected = expected_cap_alerts(sent, caps_of, APPS)
    alert_records = d.alerts(expect=len(expected), timeout=60, settle=3.0)
    alerts = values_of(alert_records)
    assert Counter(a["id"] for a in alerts) == Counter(expected.keys())
    assert [header(r, "meter-id") for r in alert_records] == [a["id"].encode() for a in alerts]
    for a in alerts:
        e = expected[a["id"]]
        assert (a["kind"], a["subject_type"], a["subject"], a["cap"]) == (
            "cap", e.stype, e.subject, e.cap.key,
        )  # fmt: skip
        assert (a["threshold"], a["severity"], a["limit"], a["late"]) == (
            e.ratio, e.severity, e.cap.limit, False,
        )  # fmt: skip
        assert a["window"] == {
            "size": e.cap.size,
            "start": iso(e.window_start),
            "end": iso(e.window_start + e.cap.size_ms),
        }
        if e.cap.metric == "calls":
            assert a["used"] == e.level  # calls grow one at a time
        else:  # the crossing event's records may overshoot the level
            assert e.level <= a["used"] < e.level + 26

    # The quota feed: the last record of every subject and cap holds the usage of the subject's
    # newest window. Coalesced updates follow within --quota-interval and a progress report.
    want_feed = expected_feed(sent + pushed, caps_of, APPS)
    # (the pushed apps' newest windows are "ok", the others' busy last phase "exceeded")
    assert {state for _, _, state in want_feed.values()} >= {"ok", "exceeded"}
    deadline = time.monotonic() + 60
    while (feed := d.quota_feed()) and time.monotonic() < deadline:
        if feed_view(feed) == want_feed:
            break
        time.sleep(0.5)
    got_feed = feed_view(feed)
    assert got_feed == want_feed, sorted(
        (k, got_feed.get(k), want_feed.get(k))
        for k in set(got_feed) | set(want_feed)
        if got_feed.get(k) != want_feed.get(k)
    )[:8]
    for q in feed.values():
        assert q is not None
        assert q["remaining"] == max(0, q["limit"] - q["used"])
        assert q["reset_at"] == q["window"]["end"]
    worker.stop()


def feed_view(feed: dict[str, dict[str, Any] | None]) -> dict[str, tuple[int, int, str]]:
    """(window start, used, state) of each key of the quota feed."""
    return {
        k: (ms(v["window"]["start"].replace("Z", "+00:00")), v["used"], v["state"])
        for k, v in feed.items()
        if v is not None
    }


def test_an_unknown_app_claiming_several_orgs_is_counted_exactly(
    deployments: Callable[..., Deployment],
) -> None:
    """An app the policy does not know, whose events claim one org, another, or none: its app
    totals, each claimed org's totals and its one unknown-app alert all come out exact (every
    state key has one owner although the claims route to different partitions)."""
    d = deployments(POLICY, partitions=4)
    t0 = ms("2022-03-01T10:00")
    claims = ["acme"] * 3 + ["zeta"] * 2 + [None] * 4
    sent = [
        event(f"u{i}", t0 + i * 1000, "stray", records=i, org=org) for i, org in enumerate(claims)
    ]
    sent.append(event("k1", t0, "acme-1", records=100))
    d.start_worker()
    d.send_events(sent, keys=[f"k{i}".encode() for i in range(len(sent))])
    d.push(ms("2022-03-01T12:00"), ["acme-2"])
    want = {
        ("app", "stray"): (9, sum(range(9))),
        ("org", "acme"): (3 + 1, 0 + 1 + 2 + 100),
        ("org", "zeta"): (2, 3 + 4),
        ("app", "acme-1"): (1, 100),
    }
    windows = values_of(d.windows(expect=len(want) * 2, timeout=120))
    got = {
        (w["subject_type"], w["subject"]): (w["calls"], w["records"])
        for w in windows
        if w["window"]["size"] == "15m" and w["window"]["start"] == "2022-03-01T10:00:00Z"
    }
    assert got == want
    unknown = [
        a for a in values_of(d.alerts(expect=None, timeout=30)) if a["kind"] == "unknown_app"
    ]
    assert [a["subject"] for a in unknown] == ["stray"]
    d.stop_all()

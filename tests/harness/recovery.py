"""The recovery scenario shared by the recovery tests and the chaos runner: nine apps of three
organisations, a 15-minute call cap per app and an hourly records cap per org, a stream of batches
over 1.5 hours of event time, and the exactness check run after everything was consumed.

Workers run with the default settings (dedup horizon: an hour of ingest time). The stream
compresses 1.5 hours of event time into seconds, so a replay after a crash or a rebalance arrives
far behind the event-time watermark; ids are remembered by ingest time, which it does not outrun.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from tests.harness.data import HOUR_MS, MIN_MS, Event, dumps, event, header, ms, values_of
from tests.harness.deployment import Deployment
from tests.harness.kafka import BackgroundProducer
from tests.harness.oracle import (
    CapSpec,
    describe_differences,
    duplicates,
    expected_cap_alerts,
    expected_totals,
    totals_of,
    window_key,
)

ORGS = ("acme", "globex", "initech")
ORG_OF = {f"{org}-{i}": org for org in ORGS for i in range(1, 4)}  # 9 apps
SIZES = {"15m": 15 * MIN_MS, "1h": HOUR_MS}
POLICY = """
version: 1
tiers:
  std:
    caps:
      - {id: calls-15m, metric: calls, window: 15m, limit: 150, thresholds: [0.5, 0.8, 1.0]}
orgs:
  acme:
    caps:
      - {id: records-1h, metric: records, window: 1h, limit: 40000,
         thresholds: [0.25, 0.5, 0.75, 1.0]}
  globex:
    caps:
      - {id: records-1h, metric: records, window: 1h, limit: 40000,
         thresholds: [0.25, 0.5, 0.75, 1.0]}
  initech: {}
apps:
""" + "".join(f"  {app}: {{org: {org}, tier: std}}\n" for app, org in ORG_OF.items())
CALLS_15M = CapSpec("tier:std:calls-15m", "calls", "15m", 15 * MIN_MS, 150, (0.5, 0.8, 1.0))
MAX_RECORDS = 20


def caps_of(stype: str, subject: str) -> Sequence[CapSpec]:
    if stype == "app":
        return (CALLS_15M,)
    if subject == "initech":
        return ()
    return (
        CapSpec(
            f"org:{subject}:records-1h", "records", "1h", HOUR_MS, 40000, (0.25, 0.5, 0.75, 1.0)
        ),
    )


def stream(
    rng: random.Random,
    n: int = 30_000,
    per_record: int = 50,
    retries: float = 0.0,
    span_ms: int = 90 * MIN_MS,
) -> list[list[Event]]:
    """n events over `span_ms` of event time (default 1.5 hours: six 15-minute windows, two
    hours), in batches. With `retries`, that share of the batches also carries 1-3 events sent
    before (a gateway retrying a call): the same id, to be counted once."""
    t = ms("2022-03-01T10:00")
    step = max(1, span_ms // n)
    events = [
        event(
            f"e{i}",
            t + (i * span_ms) // n + rng.randrange(step),
            rng.choice(list(ORG_OF)),
            records=rng.randrange(MAX_RECORDS + 1),
            endpoint=rng.choice(["/search", "/users", "/tweets"]),
        )
        for i in range(n)
    ]
    batches = [events[i : i + per_record] for i in range(0, n, per_record)]
    if retries:
        for i, batch in enumerate(batches):
            if i and rng.random() < retries:
                # events[k] for k < i * per_record: any event sent before (no slice: a copy of
                # the list per batch made long streams quadratic)
                batch.extend(
                    events[rng.randrange(i * per_record)] for _ in range(rng.randint(1, 3))
                )
    return batches


def start_stream(
    d: Deployment, batches: list[list[Event]], rng: random.Random, pause: float = 0.02
) -> BackgroundProducer:
    """Produce the batches in the background (random keys, four input partitions), ~12 s for
    600 batches."""
    producer = BackgroundProducer(
        d.bootstrap,
        d.input_topic,
        [dumps(b) for b in batches],
        [f"k{rng.randrange(10**9)}".encode() for _ in batches],
        pause=pause,
    )
    producer.start()
    return producer


def alerts_reach(d: Deployment, n: int) -> Callable[[], bool]:
    return lambda: len(d.alerts(expect=None, timeout=10)) >= n


def finish_and_check(d: Deployment, sent: list[Event]) -> None:
    """Close every window, wait until the pipeline has done everything with it, then check final
    totals and alerts against what was sent."""
    d.wait_consumed(timeout=120)
    pushed = ms("2022-03-02T12:00")
    d.push(pushed, [f"{org}-1" for org in ORGS])
    d.wait_settled(timeout=180, watermark_ms=pushed)
    check_outputs(d, sent)


def check_outputs(d: Deployment, sent: list[Event]) -> None:
    """The final totals and alerts on the output topics against what was sent."""
    want = {k: t.as_json() for k, t in expected_totals(sent, SIZES, ORG_OF).items()}
    # every app and org in every window the stream covers (six 15-minute windows and two hours
    # for the default stream): the comparison below is not of two empty sets
    buckets = {size: len({e["time"] // ms_ for e in sent}) for size, ms_ in SIZES.items()}
    assert len(want) == (len(ORG_OF) + len(ORGS)) * sum(buckets.values()), buckets
    records = d.windows(expect=None, timeout=30)
    windows = values_of(records)
    expected = expected_cap_alerts(sent, caps_of, ORG_OF)
    alert_records = d.alerts(expect=None, timeout=30)
    alerts = values_of(alert_records)

    # Published exactly once: no id twice on either topic, and ids match the meter-id header.
    assert not duplicates(w["id"] for w in windows), "a window record was published twice"
    assert not duplicates(a["id"] for a in alerts), "an alert was published twice"
    assert [header(r, "meter-id") for r in records] == [w["id"].encode() for w in windows]
    assert [header(r, "meter-id") for r in alert_records] == [a["id"].encode() for a in alerts]
    revisions: dict[Any, list[int]] = {}
    for w in windows:
        revisions.setdefault(window_key(w), []).append(w["revision"])
    for key, revs in revisions.items():
        # 0, 1, 2, ... (or 1, 2, ... for a window whose first events all came after its close)
        assert sorted(revs) == list(range(min(revs), max(revs) + 1)), (key, revs)
        assert min(revs) in (0, 1), (key, revs)

    # Exact: the final revision of every window, and one alert per threshold reached.
    got = totals_of(windows)
    ids = {a["id"] for a in alerts}
    assert got == want, describe_differences(got, want) + (
        f"\nalerts: {len(set(expected) - ids)} missing, {len(ids - set(expected))} unexpected"
    )
    assert ids == set(expected), (
        f"missing {len(set(expected) - ids)}, unexpected {len(ids - set(expected))}"
    )
    for a in alerts:
        e = expected[a["id"]]
        assert (a["subject"], a["cap"], a["threshold"]) == (e.subject, e.cap.key, e.ratio)
        if e.cap.metric == "calls":
            assert a["used"] == e.level
        else:
            assert e.level <= a["used"] <= e.level + MAX_RECORDS

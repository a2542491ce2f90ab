"""End to end: exactness under failure. A worker is SIGKILLed twice while a stream is being
produced and processed, and restarted (with its data dir, or a new one so the state must come back
from the changelog topic); two workers share the partitions while one stops and another joins.
Afterwards every window's final totals must be exact and every alert published exactly once."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.integration.worker_proc import (
    HOUR_MS,
    MIN_MS,
    BackgroundProducer,
    CapSpec,
    Deployment,
    Event,
    deployment_factory,
    describe_differences,
    dumps,
    duplicates,
    event,
    expected_cap_alerts,
    expected_totals,
    header,
    ms,
    totals_of,
    values_of,
    wait_until,
    window_key,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

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
# The stream compresses 1.5 hours of event time into ~12 s. Ids are remembered for an hour of
# event time by default: a replay (after a crash or a rebalance) can arrive more than an hour of
# event time behind the watermark here, which no real deployment would see. Remember them all.
DEDUP_ALL = ["--dedup-horizon", "1d"]


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


@pytest.fixture
def deployments(
    kafka_bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> Iterator[Callable[..., Deployment]]:
    with deployment_factory(kafka_bootstrap, tmp_path, unique) as make:
        yield make


def stream(rng: random.Random, n: int = 30_000, per_record: int = 50) -> list[list[Event]]:
    """n events over 1.5 hours of event time (six 15-minute windows, two hours), in batches."""
    t = ms("2022-03-01T10:00")
    step = (90 * MIN_MS) // n
    events = [
        event(
            f"e{i}",
            t + i * step + rng.randrange(step),
            rng.choice(list(ORG_OF)),
            records=rng.randrange(MAX_RECORDS + 1),
            endpoint=rng.choice(["/search", "/users", "/tweets"]),
        )
        for i in range(n)
    ]
    return [events[i : i + per_record] for i in range(0, n, per_record)]


def start_stream(
    d: Deployment, batches: list[list[Event]], rng: random.Random
) -> BackgroundProducer:
    """Produce the batches in the background (random keys, four input partitions), ~12 s."""
    producer = BackgroundProducer(
        d.bootstrap,
        d.input_topic,
        [dumps(b) for b in batches],
        [f"k{rng.randrange(10**9)}".encode() for _ in batches],
        pause=0.02,
    )
    producer.start()
    return producer


def alerts_reach(d: Deployment, n: int) -> Callable[[], bool]:
    return lambda: len(d.alerts(expect=None, timeout=10)) >= n


def finish_and_check(d: Deployment, sent: list[Event]) -> None:
    """Close every window, then check final totals and alerts against what was sent."""
    d.wait_consumed(timeout=120)
    d.send_events([event(f"push-{org}", ms("2022-03-02T12:00"), f"{org}-1") for org in ORGS])

    want = {k: t.as_json() for k, t in expected_totals(sent, SIZES, ORG_OF).items()}
    assert len(want) == 9 * 6 + 9 * 2 + 3 * 6 + 3 * 2
    d.settled_windows(want.keys(), timeout=120, quiet=4.0)
    records = d.windows(expect=None, timeout=30)
    windows = values_of(records)
    expected = expected_cap_alerts(sent, caps_of, ORG_OF)
    alert_records = d.alerts(expect=len(expected), timeout=60, settle=3.0)
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


@pytest.mark.parametrize("data_dir", ["same-data-dir", "new-data-dir"])
def test_sigkill_mid_stream_and_restart_counts_exactly_once(
    deployments: Callable[..., Deployment], data_dir: str
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    d = deployments(POLICY, partitions=4, extra=DEDUP_ALL)
    batches = stream(rng)
    sent = [ev for b in batches for ev in b]
    worker = d.start_worker(label="first")
    producer = start_stream(d, batches, rng)

    # Two crashes while the stream is being processed, at different points.
    for n, (alerts_seen, label) in enumerate([(30, "second"), (100, "third")]):
        wait_until(
            alerts_reach(d, alerts_seen),
            120,
            interval=0.3,
            what=f"{alerts_seen} alerts",
            abort=d.died,
        )
        time.sleep(rng.uniform(0.0, 0.5))
        print(f"kill {n + 1}: {producer.sent} of {len(batches)} records produced")
        worker.kill()
        d.evict(worker)
        same = data_dir == "same-data-dir"
        worker = d.start_worker(data_dir=worker.data_dir if same else None, label=label)
    producer.finish()
    finish_and_check(d, sent)
    d.stop_all()


def test_two_workers_share_partitions_through_rebalances(
    deployments: Callable[..., Deployment],
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    d = deployments(POLICY, partitions=4, extra=DEDUP_ALL)
    batches = stream(rng)
    sent = [ev for b in batches for ev in b]
    first = d.start_worker(label="a")
    second = d.start_worker(label="b")
    both = sorted([first.web_port, second.web_port])
    wait_until(lambda: d.members() == both, 90, what="both workers to get partitions")
    producer = start_stream(d, batches, rng)

    wait_until(alerts_reach(d, 40), 120, interval=0.3, what="40 alerts", abort=d.died)
    first.stop()  # clean stop mid-stream: its partitions move to the other worker
    wait_until(alerts_reach(d, 110), 120, interval=0.3, what="110 alerts", abort=d.died)
    d.start_worker(label="c")  # a new member with an empty data dir takes some back
    producer.finish()
    finish_and_check(d, sent)
    assert len(d.running()) == 2
    d.stop_all()

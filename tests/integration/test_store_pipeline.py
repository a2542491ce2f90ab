"""End to end: events through a real `meter worker`, then `meter store` subprocesses into SQLite and
a real PostgreSQL, SIGKILLed mid-ingest and restarted. The stored totals per app, org, window,
endpoint and recipient (late revisions and compacted `expired` windows included) and the alerts
equal what the test computes from what it sent, and no record is stored twice."""

from __future__ import annotations

import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from kafka import KafkaConsumer, TopicPartition

from meter.adapters.store.database import Database, open_database
from meter.adapters.store.queries import UsageQuery, usage
from tests.harness.data import HOUR_MS, MIN_MS, Event, event, ms, values_of
from tests.harness.deployment import Deployment, deployment_factory
from tests.harness.kafka import read_all
from tests.harness.oracle import WindowKey, expected_totals
from tests.harness.postgres import PostgresServer, postgres_server
from tests.harness.processes import WorkerProcess, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ORG_OF = {"acme-1": "acme", "acme-2": "acme", "acme-3": "acme", "globex-1": "globex",
          "globex-2": "globex", "globex-3": "globex"}  # fmt: skip
SIZES = {"15m": 15 * MIN_MS, "1h": HOUR_MS, "1d": 24 * HOUR_MS}
GRACE_MS = 1000
POLICY = """
version: 1
tiers:
  std:
    caps:
      - {id: calls-15m, metric: calls, window: 15m, limit: 30}
orgs:
  acme:
    caps:
      - {id: records-1h, metric: records, window: 1h, limit: 3000, thresholds: [0.5, 1.0]}
      - {id: calls-1d, metric: calls, window: 1d, limit: 5000}
  globex: {}
apps:
  acme-1: {org: acme, tier: std}
  acme-2: {org: acme, tier: std}
  acme-3: {org: acme, tier: std}
  globex-1: {org: globex, tier: std}
  globex-2: {org: globex, tier: std}
  globex-3: {org: globex, tier: std}
restricted_uses:
  - {recipient: government, requires: notice, severity: critical}
"""


@dataclass
class Pipeline:
    """What went through the worker: the events, and the outputs as Kafka holds them."""

    deployment: Deployment
    sent: list[Event]
    closed_before: int
    """Windows ending a grace before this were closed by the last push."""
    window_values: list[dict[str, Any]]
    alert_values: list[dict[str, Any]]


def events(rng: random.Random, prefix: str, n: int, start: str, span_ms: int) -> list[Event]:
    t0 = ms(start)
    return [
        event(f"{prefix}{i}", t0 + rng.randrange(span_ms), rng.choice(list(ORG_OF)),
              records=rng.randrange(31),
              endpoint=rng.choice(["/search/recent", "/users/lookup", "/tweets", None]),
              recipient=rng.choice([None, None, "government", "partner"]))
        for i in range(n)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pipeline(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """One worker, three phases: events, late events (revision 1, complete), and late events
    after compaction (base expired, late horizon 2h); every window closed by a last push."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    suffix = uuid.uuid4().hex[:8]
    with deployment_factory(
        kafka_bootstrap, tmp_path_factory.mktemp("store"), lambda b: f"{b}-{suffix}"
    ) as make:
        d = make(POLICY, partitions=4, extra=["--late-horizon", "2h"])
        worker = d.start_worker()
        apps = ["acme-1", "globex-1"]
        sent: list[Event] = []
        for phase, (start, span, push_at) in enumerate([
            ("2022-03-01T10:00", 2 * HOUR_MS, "2022-03-01T12:10"),
            ("2022-03-01T11:00", HOUR_MS, "2022-03-01T13:20"),  # late: revision 1
            ("2022-03-01T10:00", HOUR_MS, "2022-03-02T12:00"),  # after compaction: expired
        ]):  # fmt: skip
            batch = events(rng, f"p{phase}-", 400 if phase == 0 else 120, start, span)
            d.send_events(batch, keys=[f"k{rng.randrange(10**9)}".encode() for _ in batch])
            sent += batch
            d.wait_consumed()
            sent += d.push(ms(push_at), apps)
            d.wait_settled(watermark_ms=ms(push_at))
        worker.stop()
        yield Pipeline(
            d, sent, ms("2022-03-02T12:00") - GRACE_MS,
            values_of(read_all(kafka_bootstrap, d.windows_topic, timeout=60)),
            values_of(read_all(kafka_bootstrap, d.alerts_topic, timeout=60)),
        )  # fmt: skip


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


# -- expectations from the events sent -----------------------------------------------------------
def expected_windows(p: Pipeline) -> dict[WindowKey, dict[str, Any]]:
    """{window: {calls, records, endpoints, recipients}} of every closed window."""
    totals = expected_totals(p.sent, SIZES, ORG_OF)
    recipients: dict[WindowKey, Counter[tuple[str, str]]] = {}
    for ev in p.sent:
        if ev.get("recipient") is None:
            continue
        for stype, subject in (("app", ev["app_id"]), ("org", ORG_OF[ev["app_id"]])):
            for size, size_ms in SIZES.items():
                key = (stype, subject, size, ev["time"] - ev["time"] % size_ms)
                cell = recipients.setdefault(key, Counter())
                cell[(ev["recipient"], "calls")] += 1
                cell[(ev["recipient"], "records")] += ev["records"]
    out = {}
    for key, t in totals.items():
        if key[3] + SIZES[key[2]] <= p.closed_before:
            cells = recipients.get(key, Counter())
            names = sorted({name for name, _ in cells})
            out[key] = t.as_json() | {"recipients": {
                n: {"calls": cells[(n, "calls")], "records": cells[(n, "records")]} for n in names
            }}  # fmt: skip
    return out


def stored_windows(db: Database) -> dict[WindowKey, dict[str, Any]]:
    """The store's current totals with whole breakdowns (parts summed)."""
    out: dict[WindowKey, dict[str, Any]] = {}
    for st, s, size, start, calls, records in db.fetchall(
        "SELECT subject_type, subject, window_size, window_start, calls, records FROM usage_window"
    ):
        out[(st, s, size, int(start))] = {"calls": int(calls), "records": int(records),
                                          "endpoints": {}, "recipients": {}}  # fmt: skip
    for table, column in (("endpoint", "endpoints"), ("recipient", "recipients")):
        for st, s, size, start, name, calls, records in db.fetchall(
            f"SELECT subject_type, subject, window_size, window_start, {table}, SUM(calls), "
            f"SUM(records) FROM usage_window_{table} GROUP BY subject_type, subject, "
            f"window_size, window_start, {table}"
        ):
            out[(st, s, size, int(start))][column][name] = {"calls": int(calls),
                                                            "records": int(records)}  # fmt: skip
    return out


def local_day(t: int, tz: str) -> Any:
    return datetime.fromtimestamp(t / 1000, UTC).astimezone(ZoneInfo(tz)).date()


# -- running the store ---------------------------------------------------------------------------
def start_store(p: Pipeline, url: str, workdir: Path, label: str) -> WorkerProcess:
    d = p.deployment
    args = [
        "store", "--database", url, "--bootstrap", d.bootstrap, "--group", d.group,
        "--windows-topic", d.windows_topic, "--alerts-topic", d.alerts_topic, "--batch", "3",
    ]  # fmt: skip
    return WorkerProcess(args, workdir / f"store-{label}.log", 0, workdir / f"store-{label}")


def resume_text(p: Pipeline, stored: dict[tuple[str, int], int]) -> str:
    """How the store's start line shows where it resumes (`partition@offset`, or `@start`)."""
    d = p.deployment
    return "; ".join(
        f"{t} " + " ".join(f"{i}@{stored.get((t, i), 'start')}" for i in range(d.partitions))
        for t in (d.windows_topic, d.alerts_topic)
    )


def count(db: Database, table: str = "window_revision") -> int:
    return int(db.fetchall(f"SELECT COUNT(*) FROM {table}")[0][0])


def end_offsets(p: Pipeline) -> dict[tuple[str, int], int]:
    d = p.deployment
    consumer = KafkaConsumer(bootstrap_servers=d.bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, i) for t in (d.windows_topic, d.alerts_topic)
               for i in range(d.partitions)]  # fmt: skip
        return {(tp.topic, tp.partition): o for tp, o in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def offsets(db: Database) -> dict[tuple[str, int], int]:
    rows = db.fetchall("SELECT topic, partition, next_offset FROM consumer_offset")
    return {(str(t), int(q)): int(o) for t, q, o in rows}


def kill_mid_ingest(store: WorkerProcess, db: Database, above: int, total: int) -> int:
    """SIGKILL `store` as soon as it has stored more than `above` window records (or all)."""

    def progressed() -> int:
        n = count(db)
        return n if n > above or n >= total else 0

    n = wait_until(progressed, 120, interval=0.01, what="the store to write", abort=store.died)
    store.kill()
    return n


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_store_holds_exact_totals_through_kills_and_restarts(
    pipeline: Pipeline, request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    p = pipeline
    want = expected_windows(p)
    assert any(v["base"] == "expired" for v in p.window_values), "no compacted window re-published"
    assert any(v["revision"] > 0 and v["base"] == "complete" for v in p.window_values)
    if backend == "sqlite":
        url = str(tmp_path / "var" / "meter.db")
    else:
        url = request.getfixturevalue("postgres").create_database()
    db = open_database(url)
    try:
        first = start_store(p, url, tmp_path, "1")
        total = len(p.window_values)
        at_kill = [kill_mid_ingest(first, db, 0, total)]
        second = start_store(p, url, tmp_path, "2")
        at_kill.append(kill_mid_ingest(second, db, at_kill[0], total))
        print(f"{backend}: killed at {at_kill} of {total} window records")
        resume, before = offsets(db), count(db)
        third = start_store(p, url, tmp_path, "3")
        ends = end_offsets(p)
        wait_until(lambda: offsets(db) == {k: v for k, v in ends.items() if v}, 120,
                   what="the store to catch up", abort=third.died)  # fmt: skip
        third.stop()
        # It resumed at the offsets committed with the rows, and read nothing stored again.
        log = third.log_text()
        assert resume_text(p, resume) in log, log
        done = re.search(
            r"stored (\d+) window record\(s\) \(\d+ changed totals, (\d+) replays", log
        )
        assert done is not None, log
        assert (int(done.group(1)), int(done.group(2))) == (total - before, 0)

        # Every record once: the evidence is exactly the topic's records.
        rows = db.fetchall("SELECT record_id, payload FROM window_revision")
        assert len(rows) == len(p.window_values) == len({v["id"] for v in p.window_values})
        assert {r[0] for r in rows} == {v["id"] for v in p.window_values}
        alert_ids = [r[0] for r in db.fetchall("SELECT id FROM alert")]
        assert sorted(alert_ids) == sorted(a["id"] for a in p.alert_values)
        assert {a["kind"] for a in p.alert_values} == {"cap", "restricted_use"}

        # Totals, endpoints and recipients of every closed window, as sent.
        got = stored_windows(db)
        assert set(got) == set(want)
        diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        assert not diff, f"{len(diff)} windows differ, e.g. {next(iter(diff.items()))}"

        # And through the queries: hours of each org, days of apps in UTC (stored 1d windows)
        # and in Tokyo (summed from hours), recipients per org.
        day = (ms("2022-03-01T00:00"), ms("2022-03-02T00:00"))
        check_hours(db, p, day)
        check_days(db, p, "UTC", day, "1d")
        tokyo = (ms("2022-03-01T00:00+09:00"), ms("2022-03-02T00:00+09:00"))
        check_days(db, p, "Asia/Tokyo", tokyo, "1h")
    finally:
        db.close()


def check_hours(db: Database, p: Pipeline, span: tuple[int, int]) -> None:
    want: Counter[tuple[Any, ...]] = Counter()
    for ev in p.sent:
        if span[0] <= ev["time"] < span[1] and ev.get("recipient"):
            hour = ev["time"] - ev["time"] % HOUR_MS
            want[(hour, ORG_OF[ev["app_id"]], ev["recipient"])] += ev["records"]
    q = UsageQuery("org", *span, window="1h", group_by=("subject", "recipient"), metric="records")
    page = usage(db, q)
    assert page.source_window == "1h"
    assert page.next_cursor is None
    got = Counter({(r.from_ms, r.subject, r.dimensions["recipient"]): r.records for r in page.rows})
    assert got == want
    assert all(r.final for r in page.rows)


def check_days(db: Database, p: Pipeline, tz: str, span: tuple[int, int], source: str) -> None:
    want: Counter[tuple[Any, ...]] = Counter()
    for ev in p.sent:
        if span[0] <= ev["time"] < span[1]:
            key = (local_day(ev["time"], tz), ev["app_id"], ev.get("endpoint") or "(none)")
            want[(*key, "calls")] += 1
            want[(*key, "records")] += ev["records"]
    q = UsageQuery("app", *span, window="1d", tz=tz, group_by=("subject", "endpoint"))
    page = usage(db, q)
    assert page.source_window == source
    got: Counter[tuple[Any, ...]] = Counter()
    for r in page.rows:
        key = (local_day(r.from_ms, tz), r.subject, r.dimensions["endpoint"])
        got[(*key, "calls")] += r.calls or 0
        got[(*key, "records")] += r.records or 0
    assert +got == +want


def test_a_store_reading_beside_the_worker_sees_each_record_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The store runs while the worker publishes (no kill): the same exact-once outcome."""
    with deployment_factory(kafka_bootstrap, tmp_path, lambda b: f"{b}-{uuid.uuid4().hex[:8]}") \
            as make:  # fmt: skip
        d = make(POLICY, partitions=2)
        url = str(tmp_path / "live.db")
        db = open_database(url)
        args = ["store", "--database", url, "--bootstrap", d.bootstrap, "--group", d.group,
                "--windows-topic", d.windows_topic, "--alerts-topic", d.alerts_topic]  # fmt: skip
        store = WorkerProcess(args, tmp_path / "store.log", 0, tmp_path / "store")
        worker = d.start_worker()
        rng = random.Random(5)
        sent = events(rng, "live-", 300, "2022-03-01T10:00", HOUR_MS)
        d.send_events(sent)
        d.wait_consumed()
        sent += d.push(ms("2022-03-01T12:00"), ["acme-1"])
        d.wait_settled(watermark_ms=ms("2022-03-01T12:00"))
        published = values_of(d.windows())
        wait_until(lambda: count(db) == len(published), 60, what="the store",
                   abort=store.died)  # fmt: skip
        time.sleep(1.0)  # anything extra would show now
        store.stop()
        worker.stop()
        assert count(db) == len(published)
        closed = {k: v for k, v in expected_totals(sent, SIZES, ORG_OF).items()
                  if k[3] + SIZES[k[2]] <= ms("2022-03-01T12:00") - GRACE_MS}  # fmt: skip
        got = {k: {"calls": v["calls"], "records": v["records"], "endpoints": v["endpoints"]}
               for k, v in stored_windows(db).items()}  # fmt: skip
        assert got == {k: t.as_json() for k, t in closed.items()}
        db.close()

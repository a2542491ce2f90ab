"""The usage store on a real PostgreSQL server gives the same answers as on SQLite: the same
batches (revisions, compacted windows, replays, alerts) applied to both, then every kind of
query compared row for row; and two writers applying the same batches at once store them once."""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from meter.adapters.store.database import Database, open_database
from meter.adapters.store.ingest import ALERTS, WINDOWS, apply_batch
from meter.adapters.store.queries import AlertQuery, UsageQuery, alerts, usage
from meter.adapters.store.records import Consumed
from meter.core.windows import format_ms
from tests.harness.postgres import PostgresServer, postgres_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MIN = 60_000
SIZES = {"15m": 15 * MIN, "1h": 60 * MIN, "1d": 1440 * MIN}
START = 1_643_500_800_000  # 2022-01-30T00:00:00Z
ORG_OF = {"a1": "o1", "a2": "o1", "b1": "o2"}
KINDS = {"windows": WINDOWS, "alerts": ALERTS}


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def record(stype: str, subject: str, size: str, start: int, rev: int, base: str,
           rng: random.Random) -> dict[str, Any]:  # fmt: skip
    names = rng.sample(["/s", "/u", "/t", "(none)"], rng.randrange(1, 4))
    endpoints = {e: {"calls": rng.randrange(9), "records": rng.randrange(99)} for e in names}
    recipients = {r: {"calls": rng.randrange(5), "records": rng.randrange(50)}
                  for r in rng.sample(["gov", "partner"], rng.randrange(0, 3))}  # fmt: skip
    calls = sum(c["calls"] for c in endpoints.values()) + rng.randrange(3)
    return {
        "id": hashlib.sha256(f"{stype}{subject}{size}{start}{rev}".encode()).hexdigest()[:32],
        "subject_type": stype, "subject": subject,
        "org_id": subject if stype == "org" else ORG_OF[subject],
        "window": {"size": size, "start": format_ms(start), "end": format_ms(start + SIZES[size])},
        "revision": rev, "calls": calls, "records": rng.randrange(1000), "endpoints": endpoints,
        "recipients": recipients, "late_events": rev,
        "caps": [{"cap": "c", "metric": "calls", "limit": 50, "used": calls,
                  "utilization": calls / 50}],
        "base": base, "emitted_at": format_ms(start + SIZES[size]),
    }  # fmt: skip


def alert(i: int, rng: random.Random) -> dict[str, Any]:
    subject = rng.choice(list(ORG_OF))
    crossed = START + rng.randrange(48) * 60 * MIN
    return {
        "id": f"{i:032x}", "kind": rng.choice(["cap", "restricted_use"]),
        "severity": rng.choice(["warning", "critical"]), "subject_type": "app",
        "subject": subject, "org_id": ORG_OF[subject], "cap": None, "metric": "calls",
        "window": {"size": "1d", "start": format_ms(START), "end": format_ms(START + SIZES["1d"])},
        "limit": None, "used": 1, "threshold": None, "crossed_at": format_ms(crossed),
        "emitted_at": format_ms(crossed), "late": rng.random() < 0.2, "event_id": f"e{i}",
    }  # fmt: skip


def batches(seed: int) -> list[list[Consumed]]:
    """Window records over two days (revisions, then compacted re-publications), with replays
    and alerts, cut into batches with Kafka-like offsets."""
    rng = random.Random(seed)
    values: list[dict[str, Any]] = []
    subjects = [("app", s) for s in ORG_OF] + [("org", "o1"), ("org", "o2")]
    for stype, subject in subjects:
        for size, size_ms in SIZES.items():
            for start in range(START, START + 2 * SIZES["1d"], size_ms):
                if rng.random() < 0.3:
                    continue
                revisions = rng.randrange(1, 4)
                for rev in range(rng.randrange(2), rng.randrange(2) + revisions + 1):
                    base = "expired" if rev >= 2 and rng.random() < 0.6 else "complete"
                    values.append(record(stype, subject, size, start, rev, base, rng))
    values += [alert(i, rng) for i in range(40)]
    values += rng.sample(values, 30)  # replays
    offsets: dict[str, int] = {}
    out: list[list[Consumed]] = []
    i = 0
    while i < len(values):
        n = rng.randrange(1, 200)
        batch = []
        for v in values[i : i + n]:
            topic = "alerts" if "kind" in v else "windows"
            offsets[topic] = offsets.get(topic, -1) + 1
            batch.append(Consumed(topic, 0, offsets[topic], json.dumps(v).encode()))
        out.append(batch)
        i += n
    return out


def load(db: Database, all_batches: list[list[Consumed]]) -> None:
    for i, batch in enumerate(all_batches):
        apply_batch(db, batch, KINDS, 1_000 * (i + 1))


@pytest.fixture(scope="module")
def both(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    tuple[Database, Database, int]
]:  # fmt: skip
    data = batches(seed=11)
    lite = open_database(str(tmp_path_factory.mktemp("lite") / "meter.db"))
    pg = open_database(postgres.create_database())
    load(lite, data)
    load(pg, data)
    yield lite, pg, len(data)
    lite.close()
    pg.close()


QUERIES = [
    UsageQuery("app", START, START + 2 * SIZES["1d"], window="1h"),
    UsageQuery("org", START, START + 2 * SIZES["1d"], window="1d",
               group_by=("subject", "recipient")),
    UsageQuery("app", START, START + SIZES["1d"], window="15m", group_by=("endpoint",), top=2,
               metric="records"),
    UsageQuery("app", START - 9 * 60 * MIN, START + 39 * 60 * MIN, window="1d", tz="Asia/Tokyo",
               group_by=("subject", "endpoint"), org_id="o1"),
    UsageQuery("app", START - 330 * MIN, START + 1110 * MIN, window="1h", tz="Asia/Kolkata",
               subjects=("a2", "b1"), metric="calls"),
    UsageQuery("app", START, START + 2 * SIZES["1d"], window=None, group_by=()),
    UsageQuery("app", 1_640_995_200_000, 1_646_092_800_000, window="month",  # Jan, Feb 2022
               group_by=("recipient",)),
]  # fmt: skip


def test_every_query_answers_the_same_on_both_backends(
    both: tuple[Database, Database, int],
) -> None:
    lite, pg, n = both
    for q in QUERIES:
        for as_of in (None, 1_000 * (n // 2), 1_000 * n, 500):
            asked = replace(q, as_of_ms=as_of)
            a, b = usage(lite, asked), usage(pg, asked)
            assert a == b, asked
            if as_of is None or as_of >= 1_000 * n:
                assert a.rows == usage(lite, replace(asked, as_of_ms=None)).rows
            assert a.rows or as_of is not None, asked
        pages: list[Any] = []
        cursor = None
        while True:
            page = usage(pg, replace(q, limit=7, cursor=cursor))
            pages += page.rows
            if (cursor := page.next_cursor) is None:
                break
        assert pages == usage(lite, q).rows
    for q in (AlertQuery(), AlertQuery(newest_first=True, kinds=("cap",), limit=5),
              AlertQuery(org_id="o1", from_ms=START + 3_600_000,
                         to_ms=START + 86_400_000)):  # fmt: skip
        assert alerts(lite, q) == alerts(pg, q)


def table(db: Database, name: str) -> list[tuple[Any, ...]]:
    rows = db.fetchall(f"SELECT * FROM {name}")
    return sorted((tuple(float(v) if isinstance(v, float) else v for v in r) for r in rows),
                  key=repr)  # fmt: skip


def write(db: Database, data: list[list[Consumed]], errors: list[BaseException]) -> None:
    try:
        load(db, data)
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_two_writers_applying_the_same_batches_store_them_once(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    data = batches(seed=12)
    for url in (postgres.create_database(), str(tmp_path / "meter.db")):
        reference = open_database(postgres.create_database())
        load(reference, data)
        writers = [open_database(url) for _ in range(2)]
        errors: list[BaseException] = []
        threads = [threading.Thread(target=write, args=(w, data, errors)) for w in writers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        for name in ("usage_window", "usage_window_endpoint", "usage_window_recipient",
                     "usage_window_cap"):  # fmt: skip
            got = [r[:9] for r in table(writers[0], name)]
            want = [r[:9] for r in table(reference, name)]
            if name == "usage_window":  # ingested_at differs: compare the figures
                got = [r[:13] for r in table(writers[0], name)]
                want = [r[:13] for r in table(reference, name)]
            assert got == want, (url, name)
        for name in ("window_revision", "alert"):
            assert len(table(writers[0], name)) == len(table(reference, name))
        for db in (*writers, reference):
            db.close()

"""The usage store's ingest on an SQLite file: revisions replace, replays change nothing, expired
breakdowns add to the last complete one, alerts are stored once, and offsets commit with the
rows (a re-applied batch adds nothing; a failed one leaves nothing)."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter.adapters.store import ingest
from meter.adapters.store.database import Database, apply_migrations, migrations, open_database
from meter.adapters.store.ingest import ALERTS, WINDOWS, BatchResult, apply_batch, stored_offsets
from meter.adapters.store.queries import UsageQuery, usage
from meter.adapters.store.records import Consumed
from meter.core.windows import format_ms

HOUR = 3_600_000
T0 = 1_646_128_800_000  # 2022-03-01T10:00:00Z
KINDS = {"windows": WINDOWS, "alerts": ALERTS}
TABLES = (
    "window_revision", "window_revision_cell", "usage_window", "usage_window_endpoint",
    "usage_window_recipient", "usage_window_cap", "alert", "rejected_record", "consumer_offset",
)  # fmt: skip


def window(
    subject: str,
    revision: int,
    endpoints: dict[str, tuple[int, int]],
    *,
    calls: int | None = None,
    records: int | None = None,
    base: str = "complete",
    start: int = T0,
    size: str = "1h",
    recipients: dict[str, tuple[int, int]] | None = None,
    stype: str = "app",
    org: str | None = "acme",
    late: int = 0,
) -> dict[str, Any]:
    """A window record; calls and records default to the endpoints' sums."""
    calls = sum(c for c, _ in endpoints.values()) if calls is None else calls
    records = sum(r for _, r in endpoints.values()) if records is None else records
    rid = hashlib.sha256(f"{stype}|{subject}|{size}|{start}|{revision}".encode()).hexdigest()
    return {
        "id": rid[:32], "subject_type": stype, "subject": subject, "org_id": org,
        "window": {"size": size, "start": format_ms(start), "end": format_ms(start + HOUR)},
        "revision": revision, "calls": calls, "records": records,
        "endpoints": {k: {"calls": c, "records": r} for k, (c, r) in endpoints.items()},
        "recipients": {k: {"calls": c, "records": r} for k, (c, r) in (recipients or {}).items()},
        "caps": [{"cap": "tier:std:calls-1h", "metric": "calls", "limit": 100, "used": calls,
                  "utilization": round(calls / 100, 6)}],
        "late_events": late, "base": base, "emitted_at": format_ms(start + HOUR + 1000),
    }  # fmt: skip


def alert(aid: str, *, subject: str = "a1", kind: str = "cap", crossed: int = T0) -> dict[str, Any]:
    return {
        "id": aid, "kind": kind, "severity": "warning", "subject_type": "app", "subject": subject,
        "org_id": "acme", "cap": "tier:std:calls-1h" if kind == "cap" else None,
        "metric": "calls", "window": {"size": "1h", "start": format_ms(T0),
                                      "end": format_ms(T0 + HOUR)},
        "limit": 100 if kind == "cap" else None, "used": 80,
        "threshold": 0.8 if kind == "cap" else None, "utilization": 0.8,
        "crossed_at": format_ms(crossed), "emitted_at": format_ms(crossed + 5), "late": False,
        "event_id": "e1",
    }  # fmt: skip


class Feed:
    """Offsets per topic partition, as Kafka would assign them."""

    def __init__(self) -> None:
        self.next: dict[tuple[str, int], int] = {}

    def records(
        self, values: Sequence[dict[str, Any] | bytes], topic: str = "windows", partition: int = 0
    ) -> list[Consumed]:
        out = []
        for v in values:
            offset = self.next.get((topic, partition), 0)
            self.next[(topic, partition)] = offset + 1
            raw = v if isinstance(v, bytes) else json.dumps(v).encode()
            out.append(Consumed(topic, partition, offset, raw))
        return out


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(str(tmp_path / "meter.db"))
    yield database
    database.close()


def store(db: Database, batch: list[Consumed], now: int = 1_000) -> BatchResult:
    return apply_batch(db, batch, KINDS, now)


def count(db: Database, table: str) -> int:
    return int(db.fetchall(f"SELECT COUNT(*) FROM {table}")[0][0])


def snapshot(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    return {t: sorted(db.fetchall(f"SELECT * FROM {t}"), key=repr) for t in TABLES}


def current(db: Database, subject: str = "a1", start: int = T0) -> tuple[Any, ...]:
    rows = db.fetchall(
        "SELECT revision, base, calls, records, late_events FROM usage_window "
        "WHERE subject = ? AND window_start = ?",
        (subject, start),
    )
    assert len(rows) == 1
    return rows[0]


def breakdown(db: Database, table: str = "usage_window_endpoint") -> dict[str, tuple[int, int]]:
    """The whole breakdown of the current totals: the parts summed."""
    column = "endpoint" if table.endswith("endpoint") else "recipient"
    rows = db.fetchall(f"SELECT {column}, SUM(calls), SUM(records) FROM {table} GROUP BY {column}")
    return {name: (int(c), int(r)) for name, c, r in rows}


def test_a_higher_revision_replaces_totals_caps_and_breakdowns(db: Database) -> None:
    feed = Feed()
    store(db, feed.records([window("a1", 0, {"/a": (3, 30)}, recipients={"gov": (1, 10)})]))
    assert current(db) == (0, "complete", 3, 30, 0)
    store(db, feed.records([window("a1", 1, {"/a": (3, 30), "/b": (2, 5)}, late=2)]))
    assert current(db) == (1, "complete", 5, 35, 2)
    assert breakdown(db) == {"/a": (3, 30), "/b": (2, 5)}
    assert breakdown(db, "usage_window_recipient") == {}
    assert db.fetchall("SELECT cap, used, limit_value FROM usage_window_cap") == [
        ("tier:std:calls-1h", 5, 100)
    ]
    assert count(db, "window_revision") == 2


def test_a_replay_of_an_older_or_equal_revision_changes_nothing(db: Database) -> None:
    feed = Feed()
    rev0, rev2 = window("a1", 0, {"/a": (3, 30)}), window("a1", 2, {"/a": (5, 50)})
    store(db, feed.records([rev0, rev2]))
    before = snapshot(db)
    result = store(db, feed.records([rev0, rev2]))  # the same records again, at new offsets
    assert (result.windows, result.applied, result.replays) == (0, 0, 2)
    after = snapshot(db)
    assert after.pop("consumer_offset") != before.pop("consumer_offset")
    assert after == before
    # A different record claiming a revision already stored: kept as evidence, not applied.
    other = window("a1", 2, {"/z": (9, 9)}) | {"id": "f" * 32}
    older = window("a1", 1, {"/y": (1, 1)})
    result = store(db, feed.records([other, older]))
    assert (result.windows, result.applied, result.replays) == (2, 0, 2)
    assert current(db) == (2, "complete", 5, 50, 0)
    assert breakdown(db) == {"/a": (5, 50)}


def test_an_expired_record_adds_its_breakdown_to_the_last_complete_one(db: Database) -> None:
    feed = Feed()
    store(db, feed.records([
        window("a1", 0, {"/a": (3, 30)}),
        window("a1", 1, {"/a": (4, 40), "/b": (1, 1)}, recipients={"gov": (2, 20)}),
    ]))  # fmt: skip
    # Compacted: whole totals, but breakdowns since compaction (cumulative per expired record).
    store(db, feed.records([
        window("a1", 2, {"/a": (1, 2)}, calls=6, records=43, base="expired",
               recipients={"gov": (1, 1)}),
    ]))  # fmt: skip
    assert current(db) == (2, "expired", 6, 43, 0)
    assert breakdown(db) == {"/a": (5, 42), "/b": (1, 1)}
    assert breakdown(db, "usage_window_recipient") == {"gov": (3, 21)}
    # The next expired record replaces the previous one's part; it never adds to it.
    store(db, feed.records([
        window("a1", 3, {"/a": (1, 2), "/c": (2, 2)}, calls=8, records=45, base="expired"),
    ]))  # fmt: skip
    assert current(db) == (3, "expired", 8, 45, 0)
    assert breakdown(db) == {"/a": (5, 42), "/b": (1, 1), "/c": (2, 2)}
    assert breakdown(db, "usage_window_recipient") == {"gov": (2, 20)}
    page = usage(db, UsageQuery("app", T0, T0 + HOUR, group_by=("endpoint",)))
    assert {r.dimensions["endpoint"]: (r.calls, r.records) for r in page.rows} == {
        "/a": (5, 42), "/b": (1, 1), "/c": (2, 2),
    }  # fmt: skip


def test_complete_then_expired_in_one_batch_keeps_both_parts(db: Database) -> None:
    feed = Feed()
    store(db, feed.records([
        window("a1", 0, {"/a": (3, 30)}),
        window("a1", 1, {"/a": (4, 40)}),
        window("a1", 2, {"/b": (1, 1)}, calls=5, records=41, base="expired"),
    ]))  # fmt: skip
    assert current(db) == (2, "expired", 5, 41, 0)
    assert breakdown(db) == {"/a": (4, 40), "/b": (1, 1)}


def test_alerts_are_stored_once_with_every_field(db: Database) -> None:
    feed = Feed()
    first = alert("a" * 32)
    result = store(db, feed.records([first, first, alert("b" * 32, kind="unknown_app")], "alerts"))
    assert (result.alerts, result.repeated_alerts) == (2, 1)
    result = store(db, feed.records([first], "alerts", partition=1))
    assert (result.alerts, result.repeated_alerts) == (0, 1)
    rows = db.fetchall(
        "SELECT id, kind, cap, limit_value, used, threshold, utilization, crossed_at, late, "
        "payload FROM alert ORDER BY id"
    )
    assert [r[:9] for r in rows] == [
        ("a" * 32, "cap", "tier:std:calls-1h", 100, 80, 0.8, 0.8, T0, 0),
        ("b" * 32, "unknown_app", None, None, 80, None, 0.8, T0, 0),
    ]
    assert json.loads(rows[0][9]) == first


def test_offsets_are_committed_with_the_rows_and_a_reapplied_batch_adds_nothing(
    db: Database,
) -> None:
    feed = Feed()
    batch1 = feed.records([window("a1", 0, {"/a": (3, 30)}), window("a2", 0, {"/a": (1, 1)})])
    batch1 += feed.records([alert("a" * 32)], "alerts", partition=2)
    batch2 = feed.records([window("a1", 1, {"/a": (4, 40)})], partition=1)
    store(db, batch1)
    assert stored_offsets(db) == {("windows", 0): 2, ("alerts", 2): 1}
    store(db, batch2)
    assert stored_offsets(db) == {("windows", 0): 2, ("windows", 1): 1, ("alerts", 2): 1}
    before = snapshot(db)
    # A crash after batch 1 committed, before Kafka knew: both batches come again.
    store(db, batch1, now=5_000)
    store(db, batch2, now=5_000)
    after = snapshot(db)
    assert after.pop("consumer_offset") != before.pop("consumer_offset")  # updated_at moved
    assert after == before


def test_a_failed_batch_stores_neither_rows_nor_offsets(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = Feed()
    batch = feed.records([window("a1", 0, {"/a": (3, 30)})])
    batch += feed.records([alert("a" * 32)], "alerts")

    def crash(*args: Any) -> None:
        raise RuntimeError("killed mid-transaction")

    monkeypatch.setattr(ingest, "_store_alerts", crash)
    with pytest.raises(RuntimeError):
        store(db, batch)
    assert {t: count(db, t) for t in TABLES} == dict.fromkeys(TABLES, 0)
    monkeypatch.undo()
    store(db, batch)
    assert stored_offsets(db) == {("windows", 0): 1, ("alerts", 0): 1}
    assert current(db) == (0, "complete", 3, 30, 0)


def test_invalid_records_are_kept_aside_and_read_past(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    feed = Feed()
    bad = window("a1", 0, {}) | {"calls": "many"}
    older = window("a2", 0, {"/a": (2, 2)})
    del older["recipients"]  # the first window schema had no recipients: still accepted
    batch = feed.records([b"not json", bad, window("a1", 0, {"/a": (1, 1)}), older])
    batch += feed.records([b"\xff", alert("a" * 32) | {"late": "no"}], "alerts")
    with caplog.at_level(logging.WARNING, logger="meter.adapters.store.ingest"):
        result = store(db, batch)
    assert result.rejected == 4
    rows = db.fetchall("SELECT source_topic, source_offset, reason FROM rejected_record")
    reasons = {(t, o): r for t, o, r in rows}
    assert reasons[("windows", 1)] == "field calls must be an integer"
    assert reasons[("alerts", 1)] == "field late must be true or false"
    assert reasons[("windows", 0)].startswith("not JSON")
    assert stored_offsets(db) == {("windows", 0): 4, ("alerts", 0): 2}
    assert current(db) == (0, "complete", 1, 1, 0)
    assert current(db, "a2") == (0, "complete", 2, 2, 0)
    assert "kept 4 invalid record(s) aside" in caplog.text


def test_migrations_run_once_and_sqlite_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "var" / "meter.db"
    first = open_database(str(path))
    assert apply_migrations(first) == []
    first.close()
    again = open_database(str(path))
    rows = again.fetchall("SELECT version, name FROM schema_version")
    assert rows == [(v, name) for v, name, _ in migrations()]
    assert rows[0] == (1, "0001_initial.sql")
    again.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


# -- a model of the rules, against random histories -------------------------------------------
ENDPOINTS = ("/a", "/b", "/c")
cells = st.dictionaries(st.sampled_from(ENDPOINTS), st.tuples(st.integers(0, 9), st.integers(0, 9)))


@st.composite
def histories(draw: st.DrawFn) -> list[list[dict[str, Any]]]:
    """Batches of window records for two windows: revisions rising with gaps, complete then
    expired (now and then the other way round), with replays of records already sent mixed in."""
    sent: list[dict[str, Any]] = []
    for subject in ("a1", "a2"):
        revision = draw(st.integers(0, 1))
        compacted_at = draw(st.integers(0, 4))
        for i in range(draw(st.integers(1, 5))):
            base = "expired" if i >= compacted_at else "complete"
            if draw(st.integers(0, 7)) == 0:  # out of the usual order: the rules still hold
                base = "complete" if base == "expired" else "expired"
            sent.append(window(subject, revision, draw(cells), base=base))
            revision += draw(st.integers(1, 2))
    order = draw(st.permutations(range(len(sent))))
    # Per window, records keep their order (one partition); windows interleave.
    by_subject = {s: [r for r in sent if r["subject"] == s] for s in ("a1", "a2")}
    stream = [by_subject[sent[i]["subject"]].pop(0) for i in order]
    stream += draw(st.lists(st.sampled_from(stream), max_size=3))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=3)))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


def model(records: list[dict[str, Any]]) -> dict[str, dict[str, tuple[int, int]]]:
    """The whole endpoint breakdown per window, by the documented rules."""
    latest: dict[str, dict[str, Any]] = {}
    complete: dict[str, dict[str, Any]] = {}
    for r in records:
        s = r["subject"]
        if s in latest and r["revision"] <= latest[s]["revision"]:
            continue
        latest[s] = r
        if r["base"] == "complete":
            complete[s] = r
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for s, r in latest.items():
        parts = [r] if r["base"] == "complete" else [r, *([complete[s]] if s in complete else [])]
        whole: dict[str, tuple[int, int]] = {}
        for part in parts:
            for name, cell in part["endpoints"].items():
                c, n = whole.get(name, (0, 0))
                whole[name] = (c + cell["calls"], n + cell["records"])
        out[s] = whole
    return out


def by_endpoint(db: Database, as_of: int | None = None) -> dict[str, dict[str, tuple[Any, Any]]]:
    q = UsageQuery("app", T0, T0 + HOUR, group_by=("subject", "endpoint"), as_of_ms=as_of)
    out: dict[str, dict[str, tuple[Any, Any]]] = {}
    for row in usage(db, q).rows:
        out.setdefault(str(row.subject), {})[row.dimensions["endpoint"]] = (row.calls, row.records)
    return out


@settings(max_examples=40, deadline=None)
@given(histories())
def test_current_totals_and_as_of_rebuilds_follow_the_rules(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[dict[str, Any]]]
) -> None:
    db = open_database(str(tmp_path_factory.mktemp("h") / "meter.db"))
    try:
        feed, seen = Feed(), []
        for i, batch in enumerate(batches):
            store(db, feed.records(batch), now=1_000 * (i + 1))
            seen += batch
            want = {s: cells for s, cells in model(seen).items() if cells}
            assert by_endpoint(db) == want
        for i in range(len(batches)):
            upto = [r for b in batches[: i + 1] for r in b]
            want = {s: cells for s, cells in model(upto).items() if cells}
            assert by_endpoint(db, as_of=1_000 * (i + 1)) == want
    finally:
        db.close()

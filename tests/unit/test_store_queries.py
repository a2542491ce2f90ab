"""The usage store's queries on an SQLite file, against totals computed here from the events the
window records were made of: buckets in time zones from the right stored windows (or a refusal
naming the parameter), breakdowns, top-N folding, org scoping, as-of cuts and paging; alerts."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from meter.adapters.store.buckets import zone
from meter.adapters.store.database import Database, SqliteDatabase, open_database
from meter.adapters.store.ingest import ALERTS, WINDOWS, apply_batch
from meter.adapters.store.queries import AlertQuery, QueryError, UsageQuery, alerts, usage
from meter.adapters.store.records import Consumed
from meter.core.windows import format_ms

MIN = 60_000
HOUR = 60 * MIN
SIZES = {"15m": 15 * MIN, "1h": HOUR}
ORG_OF = {"a1": "o1", "a2": "o1", "b1": "o2"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Event = dict[str, Any]


def ms(text: str) -> int:
    return (datetime.fromisoformat(text) - EPOCH) // timedelta(milliseconds=1)


START, END = ms("2022-01-30T00:00:00+00:00"), ms("2022-02-02T00:00:00+00:00")


def make_events(n: int, seed: int, start: int = START, end: int = END) -> list[Event]:
    rng = random.Random(seed)
    return [
        {
            "time": rng.randrange(start, end),
            "app": rng.choice(list(ORG_OF)),
            "endpoint": rng.choice(["/search", "/users", "/lookup", "/misc", "/misc"]),
            "recipient": rng.choice([None, None, "gov", "partner"]),
            "records": rng.randrange(50),
        }
        for _ in range(n)
    ]


def subjects(ev: Event) -> list[tuple[str, str]]:
    return [("app", ev["app"]), ("org", ORG_OF[ev["app"]])]


def window_records(
    events: Iterable[Event], sizes: dict[str, int], revision: int = 0
) -> list[dict[str, Any]]:
    """One complete record per (subject, window) the events touch, with exact totals."""
    cells: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for ev in events:
        for stype, subject in subjects(ev):
            for size, size_ms in sizes.items():
                start = ev["time"] - ev["time"] % size_ms
                w = cells.setdefault((stype, subject, size, start), {
                    "calls": 0, "records": 0, "endpoints": {}, "recipients": {},
                })  # fmt: skip
                w["calls"] += 1
                w["records"] += ev["records"]
                for dim, name in (("endpoints", ev["endpoint"]), ("recipients", ev["recipient"])):
                    if name is not None:
                        cell = w[dim].setdefault(name, {"calls": 0, "records": 0})
                        cell["calls"] += 1
                        cell["records"] += ev["records"]
    out = []
    for (stype, subject, size, start), w in sorted(cells.items()):
        rid = hashlib.sha256(f"{stype}{subject}{size}{start}{revision}".encode()).hexdigest()
        out.append({
            "id": rid[:32], "subject_type": stype, "subject": subject,
            "org_id": subject if stype == "org" else ORG_OF[subject],
            "window": {"size": size, "start": format_ms(start),
                       "end": format_ms(start + sizes[size])},
            "revision": revision, **w, "caps": [], "late_events": 0, "base": "complete",
            "emitted_at": format_ms(start + sizes[size]),
        })  # fmt: skip
    return out


def ingest(db: Database, values: list[dict[str, Any]], now: int, topic: str = "windows") -> None:
    stored = dict(db.fetchall("SELECT topic, next_offset FROM consumer_offset"))
    offset = stored.get(topic, 0)
    batch = [Consumed(topic, 0, offset + i, json.dumps(v).encode()) for i, v in enumerate(values)]
    apply_batch(db, batch, {"windows": WINDOWS, "alerts": ALERTS}, now)


@pytest.fixture
def empty(tmp_path: Path) -> Iterator[Database]:
    db = open_database(str(tmp_path / "meter.db"))
    yield db
    db.close()


EVENTS = make_events(3000, seed=7)


@pytest.fixture
def db(empty: Database) -> Database:
    ingest(empty, window_records(EVENTS, SIZES), now=1_000)
    return empty


# -- what the events say -------------------------------------------------------------------------
def local_label(window: str | None, tz: str) -> Callable[[int], Any]:
    zone = ZoneInfo(tz)

    def label(t: int) -> Any:
        local = (EPOCH + timedelta(milliseconds=t)).astimezone(zone)
        return {"1d": local.date(), "month": (local.year, local.month),
                "1h": local.replace(minute=0, second=0, microsecond=0),
                None: None}[window]  # fmt: skip

    return label


def expected(
    events: Iterable[Event],
    stype: str,
    window: str | None,
    tz: str,
    span: tuple[int, int],
    dim: str | None = None,
    org: str | None = None,
) -> Counter[tuple[Any, ...]]:
    """(bucket label, subject, dimension, metric) -> amount, straight from the events."""
    label = local_label(window, tz)
    out: Counter[tuple[Any, ...]] = Counter()
    for ev in events:
        if not span[0] <= ev["time"] < span[1] or (org is not None and ORG_OF[ev["app"]] != org):
            continue
        subject = ev["app"] if stype == "app" else ORG_OF[ev["app"]]
        name = ev[dim] if dim else ""
        if name is None:
            continue
        out[(label(ev["time"]), subject, name, "calls")] += 1
        out[(label(ev["time"]), subject, name, "records")] += ev["records"]
    return out


def merged(counts: Counter[tuple[Any, ...]]) -> Counter[tuple[Any, ...]]:
    """The counts with subjects summed (a query not grouped by subject)."""
    out: Counter[tuple[Any, ...]] = Counter()
    for (label, _, name, metric), n in counts.items():
        out[(label, None, name, metric)] += n
    return out


def got(db: Database, q: UsageQuery) -> Counter[tuple[Any, ...]]:
    """The same shape from the store's answer; every bucket must be one local bucket."""
    label = local_label(q.window, q.tz)
    out: Counter[tuple[Any, ...]] = Counter()
    page = usage(db, replace(q, limit=10_000))
    assert page.next_cursor is None
    for row in page.rows:
        assert label(row.from_ms) == label(row.to_ms - 1), row  # one local bucket
        name = next(iter(row.dimensions.values()), "")
        for metric in ("calls", "records"):
            if getattr(row, metric):
                out[(label(row.from_ms), row.subject, name, metric)] += getattr(row, metric)
    return out


# -- buckets -------------------------------------------------------------------------------------
def test_utc_days_are_sums_of_hour_windows(db: Database) -> None:
    q = UsageQuery("org", START, END, window="1d")
    page = usage(db, q)
    assert page.source_window == "1h"
    assert [(r.from_ms, r.to_ms) for r in page.rows if r.subject == "o1"] == [
        (START + i * 24 * HOUR, START + (i + 1) * 24 * HOUR) for i in range(3)
    ]
    assert got(db, q) == expected(EVENTS, "org", "1d", "UTC", (START, END))
    assert all(r.final for r in page.rows)
    assert page.freshness_ms == 1_000


def test_months_in_tokyo_are_sums_of_local_hours(db: Database) -> None:
    jan, mar = ms("2022-01-01T00:00:00+09:00"), ms("2022-03-01T00:00:00+09:00")
    q = UsageQuery("app", jan, mar, window="month", tz="Asia/Tokyo")
    page = usage(db, q)
    assert page.source_window == "1h"
    assert sorted({(r.from_ms, r.to_ms) for r in page.rows}) == [
        (jan, ms("2022-02-01T00:00:00+09:00")), (ms("2022-02-01T00:00:00+09:00"), mar),
    ]  # fmt: skip
    want = expected(EVENTS, "app", "month", "Asia/Tokyo", (jan, mar))
    assert got(db, q) == want
    assert {k[0] for k in want} == {(2022, 1), (2022, 2)}  # the data crosses the local month


def test_a_half_hour_zone_is_summed_from_quarter_hours(db: Database) -> None:
    first, last = ms("2022-01-30T00:00:00+05:30"), ms("2022-02-01T00:00:00+05:30")
    for window in ("1d", "1h"):
        q = UsageQuery("app", first, last, window=window, tz="Asia/Kolkata", group_by=())
        assert usage(db, q).source_window == "15m"
        assert got(db, q) == merged(expected(EVENTS, "app", window, "Asia/Kolkata", (first, last)))


def test_buckets_follow_daylight_saving_changes(empty: Database) -> None:
    """New York falls back on 2022-11-06: that day has 25 hours, its 1 a.m. hour comes twice
    (two buckets, told apart by their UTC offset), and a day bucket still sums whole hours."""
    first, last = ms("2022-11-05T00:00:00-04:00"), ms("2022-11-08T00:00:00-05:00")
    events = make_events(1500, seed=9, start=first, end=last)
    ingest(empty, window_records(events, SIZES), now=1_000)
    days = usage(empty, UsageQuery("app", first, last, window="1d", tz="America/New_York"))
    assert days.source_window == "1h"
    lengths = sorted({(r.from_ms, r.to_ms - r.from_ms) for r in days.rows})
    assert [n // HOUR for _, n in lengths] == [24, 25, 24]
    hours = usage(empty, UsageQuery("app", first, last, window="1h", tz="America/New_York",
                                    group_by=()))  # fmt: skip
    assert {r.to_ms - r.from_ms for r in hours.rows} == {HOUR}
    want = Counter()
    for ev in events:
        want[ev["time"] - ev["time"] % HOUR] += 1
    assert {r.from_ms: r.calls for r in hours.rows} == want
    repeated = ms("2022-11-06T01:00:00-04:00")
    assert {repeated, repeated + HOUR} <= set(want)  # both 1 a.m. hours have calls


def test_requests_that_cannot_be_answered_exactly_name_the_parameter(empty: Database) -> None:
    ingest(empty, window_records(EVENTS, {"1h": HOUR}), now=1_000)
    kolkata = ms("2022-01-30T00:00:00+05:30")
    bad = {
        "tz": [UsageQuery("app", kolkata, kolkata + 24 * HOUR, window="1d", tz="Asia/Kolkata"),
               UsageQuery("app", START, END, tz="Mars/Olympus_Mons")],
        "window": [UsageQuery("app", START, END, window="15m"),
                   UsageQuery("app", START, END, window="2h")],
        "from": [UsageQuery("app", START + HOUR, END, window="1d")],
        "to": [UsageQuery("app", START, END - 30 * MIN, window="1h"),
               UsageQuery("app", END, START)],
        "subject_type": [UsageQuery("user", START, END)],
        "group_by": [UsageQuery("app", START, END, group_by=("endpoint", "recipient")),
                     UsageQuery("app", START, END, group_by=("country",))],
        "metric": [UsageQuery("app", START, END, metric="bytes")],
        "top": [UsageQuery("app", START, END, top=0)],
        "limit": [UsageQuery("app", START, END, limit=0)],
        "cursor": [UsageQuery("app", START, END, cursor="not-a-cursor")],
        "subjects": [UsageQuery("app", START, END, subjects=("",))],
    }  # fmt: skip
    for param, queries in bad.items():
        for q in queries:
            with pytest.raises(ValueError, match=f"^{param}: ") as caught:
                usage(empty, q)
            assert isinstance(caught.value, QueryError)
            assert caught.value.param == param
    # Whole ranges in a half-hour zone are fine when their ends are whole hours in UTC.
    ok = usage(empty, UsageQuery("app", START, END, window=None, tz="Asia/Kolkata"))
    assert ok.source_window == "1h"


# -- groups --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", ["endpoint", "recipient"])
def test_breakdowns_by_endpoint_and_recipient(db: Database, dim: str) -> None:
    for group_by in ((dim,), ("subject", dim)):
        q = UsageQuery("app", START, END, window="1d", group_by=group_by)
        want = expected(EVENTS, "app", "1d", "UTC", (START, END), dim=dim)
        assert got(db, q) == (want if "subject" in group_by else merged(want))


def test_top_groups_come_first_and_the_rest_folds_into_other(db: Database) -> None:
    q = UsageQuery("app", START, END, window="1d", group_by=("endpoint",), top=2,
                   metric="records")  # fmt: skip
    page = usage(db, q)
    by_name = Counter()
    for ev in EVENTS:
        by_name[ev["endpoint"]] += ev["records"]
    top2 = [name for name, _ in sorted(by_name.items(), key=lambda kv: (-kv[1], kv[0]))[:2]]
    day = local_label("1d", "UTC")
    for bucket in sorted({r.from_ms for r in page.rows}):
        rows = [r for r in page.rows if r.from_ms == bucket]
        assert [r.dimensions["endpoint"] for r in rows] == [*top2, "(other)"]
        assert all(r.calls is None for r in rows)
        want = Counter()
        for ev in EVENTS:
            if day(ev["time"]) == day(bucket):
                name = ev["endpoint"] if ev["endpoint"] in top2 else "(other)"
                want[name] += ev["records"]
        assert {r.dimensions["endpoint"]: r.records for r in rows} == want


def test_an_org_id_restricts_everything_to_that_organisation(db: Database) -> None:
    q = UsageQuery("app", START, END, window=None, subjects=("a1", "b1"), org_id="o1")
    assert [(r.subject, r.org_id) for r in usage(db, q).rows] == [("a1", "o1")]
    q = UsageQuery("app", START, END, window="1d", org_id="o1", group_by=("endpoint",))
    want = expected(EVENTS, "app", "1d", "UTC", (START, END), dim="endpoint", org="o1")
    assert got(db, q) == merged(want)
    rows = usage(db, UsageQuery("org", START, END, window=None, org_id="o2")).rows
    assert [(r.subject, r.org_id) for r in rows] == [("o2", "o2")]


def test_as_of_rebuilds_what_the_store_had_then(empty: Database) -> None:
    early = make_events(800, seed=1)
    ingest(empty, window_records(early, SIZES), now=1_000)
    # Later: late events re-publish some windows (revision 1, whole totals) and open others.
    late = make_events(200, seed=2, start=START, end=START + 12 * HOUR)
    revised = {(w["subject"], w["window"]["size"], w["window"]["start"]): w
               for w in window_records(early + late, SIZES, revision=1)}  # fmt: skip
    touched = {(w["subject"], w["window"]["size"], w["window"]["start"])
               for w in window_records(late, SIZES)}  # fmt: skip
    ingest(empty, [revised[k] for k in sorted(touched)], now=2_000)
    for dim in (None, "endpoint", "recipient"):
        group = ("subject", dim) if dim else ("subject",)
        for as_of, events in ((None, early + late), (2_000, early + late), (1_999, early),
                              (1_000, early), (999, [])):  # fmt: skip
            q = UsageQuery("app", START, END, window="1h", group_by=group, as_of_ms=as_of)
            assert got(empty, q) == expected(events, "app", "1h", "UTC", (START, END), dim=dim)
    assert usage(empty, UsageQuery("app", START, END, as_of_ms=1_500)).freshness_ms == 1_000
    assert usage(empty, UsageQuery("app", START, END, as_of_ms=999)).freshness_ms is None


def test_pages_follow_each_other_in_a_stable_order(db: Database) -> None:
    q = UsageQuery("app", START, END, window="1h", group_by=("subject", "endpoint"), limit=25)
    whole = usage(db, replace(q, limit=10_000)).rows
    assert len(whole) > 50
    pages, cursor = [], None
    while True:
        page = usage(db, replace(q, cursor=cursor))
        pages += page.rows
        cursor = page.next_cursor
        if cursor is None:
            break
        assert len(page.rows) == 25
    assert pages == whole
    keys = [(r.from_ms, r.subject, r.dimensions["endpoint"]) for r in whole]
    assert keys == sorted(keys)
    first = usage(db, q).next_cursor
    with pytest.raises(QueryError, match=r"^cursor: belongs to another query"):
        usage(db, replace(q, window="1d", cursor=first))
    topped = replace(q, group_by=("endpoint",), top=2, limit=2)
    cursor, rows = None, []
    while True:
        page = usage(db, replace(topped, cursor=cursor))
        rows += page.rows
        if (cursor := page.next_cursor) is None:
            break
    assert rows == usage(db, replace(topped, limit=1000)).rows


def test_usage_queries_look_windows_up_by_index(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every table is searched through an index, and a breakdown is joined to its window by
    equality (a range there made queries over weeks of windows quadratic)."""
    assert isinstance(db, SqliteDatabase)
    plans: list[str] = []
    fetchall = db.fetchall

    def explain(sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        if "keyed" in sql:
            rows = db.conn.execute(f"EXPLAIN QUERY PLAN {sql}", tuple(params)).fetchall()
            plans.extend(str(r[3]) for r in rows)
        return fetchall(sql, params)

    monkeypatch.setattr(db, "fetchall", explain)
    for dim in ("endpoint", "recipient"):
        for as_of in (None, 1_000):
            usage(db, UsageQuery("app", START, END, group_by=("subject", dim), as_of_ms=as_of))
    tables = [p for p in plans if p.startswith(("SCAN", "SEARCH"))]
    assert all(not re.match(r"SCAN (w|c|k)\b", p) for p in tables), tables
    joins = [p for p in tables if p.startswith("SEARCH c USING INDEX sqlite_autoindex_usage")]
    assert joins, tables
    assert all("window_start=?)" in p for p in joins), joins


# -- alerts --------------------------------------------------------------------------------------
def alert_record(i: int, kind: str, subject: str, crossed: int, severity: str) -> dict[str, Any]:
    return {
        "id": f"{i:032x}", "kind": kind, "severity": severity, "subject_type": "app",
        "subject": subject, "org_id": ORG_OF[subject], "cap": "c" if kind == "cap" else None,
        "metric": "calls", "window": {"size": "1d", "start": format_ms(START),
                                      "end": format_ms(START + 24 * HOUR)},
        "limit": 10 if kind == "cap" else None, "used": 10,
        "threshold": 1.0 if kind == "cap" else None, "utilization": 1.0,
        "crossed_at": format_ms(crossed), "emitted_at": format_ms(crossed + 1), "late": False,
        "event_id": f"e{i}", **({"app_id": subject, "recipient": "gov", "rule": "notice"}
                                if kind == "restricted_use" else {}),
    }  # fmt: skip


def test_alerts_are_filtered_ordered_and_paged(empty: Database) -> None:
    rng = random.Random(3)
    made = [
        alert_record(i, rng.choice(["cap", "unknown_app", "restricted_use"]),
                     rng.choice(list(ORG_OF)), START + rng.randrange(0, 10) * HOUR,
                     rng.choice(["warning", "critical"]))
        for i in range(60)
    ]  # fmt: skip
    ingest(empty, made, now=1_000, topic="alerts")

    def ids(q: AlertQuery) -> list[str]:
        out, cursor = [], None
        while True:
            page = alerts(empty, replace(q, cursor=cursor, limit=4))
            out += [a.id for a in page.alerts]
            if (cursor := page.next_cursor) is None:
                return out

    def want(keep: Callable[[dict[str, Any]], bool], newest: bool = False) -> list[str]:
        chosen = [(ms(a["crossed_at"].replace("Z", "+00:00")), a["id"]) for a in made if keep(a)]
        return [i for _, i in sorted(chosen, reverse=newest)]

    assert ids(AlertQuery()) == want(lambda a: True)
    assert ids(AlertQuery(newest_first=True)) == want(lambda a: True, newest=True)
    assert ids(AlertQuery(org_id="o1", kinds=("cap", "restricted_use"))) == want(
        lambda a: a["org_id"] == "o1" and a["kind"] != "unknown_app"
    )
    assert ids(AlertQuery(subjects=("b1",), severities=("critical",))) == want(
        lambda a: a["subject"] == "b1" and a["severity"] == "critical"
    )
    span = AlertQuery(from_ms=START + 2 * HOUR, to_ms=START + 5 * HOUR)
    assert ids(span) == want(lambda a: "T02" <= a["crossed_at"][10:13] < "T05")
    one = alerts(empty, AlertQuery(kinds=("restricted_use",), limit=1)).alerts[0]
    assert (one.recipient, one.rule, one.cap, one.limit) == ("gov", "notice", None, None)
    assert one.payload == next(a for a in made if a["id"] == one.id)
    for param, q in (
        ("limit", AlertQuery(limit=0)),
        ("subject_type", AlertQuery(subject_type="x")),
        ("to", AlertQuery(from_ms=5, to_ms=5)),
        ("cursor", AlertQuery(cursor="!")),
    ):
        with pytest.raises(QueryError, match=f"^{param}: "):
            alerts(empty, q)


@pytest.mark.parametrize("tz", ["x" * 5000, "Europe/" + "a" * 300, "../../etc/passwd", "\x00"])
def test_a_hostile_time_zone_is_a_query_error_naming_tz(tz: str) -> None:
    with pytest.raises(QueryError, match=r"^tz: unknown IANA time zone"):
        zone(tz)

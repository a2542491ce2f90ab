"""The partition ledger: exact counts, idempotent replay, alerts, close on progress reports, late
amendments, compaction, the history horizon."""

from __future__ import annotations

from typing import Any

import pytest

from meter.core.ledger import LedgerSettings, PartitionLedger, Pending
from meter.core.ledger.records import IdBlock, decode, digest
from meter.core.outputs import ALERTS, DEAD_LETTERS, QUOTA
from meter.core.policy import Policy, load_policy
from tests.harness.ledger import (
    DAY,
    MIN,
    NOW,
    POLICY,
    T0,
    JsonStore,
    alerts_of,
    ev,
    new_ledger,
    progress,
    run,
    slot,
    stored_outbox,
    windows_of,
)


@pytest.fixture
def policy() -> Policy:
    return load_policy(POLICY)


def test_counts_per_app_and_org_in_every_window(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store)
    run(ledger, 0, [ev("e1", 1, records=5, endpoint="/search"), ev("e2", 2, "a2", records=7)])
    run(ledger, 1, [ev("e3", 16, records=1, endpoint="/search")])

    assert [w.name for w in policy.windows] == ["15m", "1h"]
    first = slot(store, "app", "a1", "15m", 0)
    assert (first.calls, first.records) == (1, 5)
    second = slot(store, "app", "a1", "15m", 15)
    assert (second.calls, second.records) == (1, 1)
    assert slot(store, "app", "a2", "15m", 0).calls == 1
    org_hour = slot(store, "org", "acme", "1h", 0)
    assert (org_hour.calls, org_hour.records) == (3, 13)
    assert org_hour.endpoints == {"/search": [2, 6], "(none)": [1, 7]}
    assert slot(store, "app", "a1", "1h", 0).calls == 2


def test_replaying_a_record_changes_nothing(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store)
    batch = [ev(f"e{i}", 1, records=10) for i in range(9)]
    first = run(ledger, 5, batch)
    snapshot = dict(store.data)
    again = run(ledger, 5, batch)
    assert store.data == snapshot
    assert again.outbox == []
    assert again.stats.events == 0  # counted the first time, not again
    assert again.stats.duplicates == 0  # ids recognised as this very record, not as repeats
    assert again.stats.calls_by_org == {}
    assert {(a["cap"], a["threshold"]) for a in alerts_of(first.outbox)} == {
        ("tier:std:calls-15m", 0.8),  # 9 calls >= 80% of 10
        ("org:acme:records-1h", 0.8),  # 90 records >= 80% of 100
    }


def _crash_then_replay(policy: Policy, crash_after: int | None) -> tuple[JsonStore, list[Pending]]:
    """Apply a record whose flush dies after `crash_after` writes, then recover and replay it."""
    store = JsonStore()
    ledger = new_ledger(policy, store)
    run(ledger, 0, [ev("warm", 0, records=1)])
    batch = [ev(f"e{i}", 1, records=10) for i in range(9)] + [ev("x", 2, "a2", records=3)]
    first = ledger.apply(1, batch, NOW, NOW)
    if crash_after is None:
        ledger.flush()
        return store, first.outbox
    store.fail_after = store.puts + crash_after
    with pytest.raises(RuntimeError):
        ledger.flush()
    store.fail_after = None
    # A new process: indexes rebuilt from the store, the record replayed from the source.
    recovered = new_ledger(policy, store)
    pending = recovered.bootstrap(store.items())
    return store, pending + run(recovered, 1, batch).outbox


def test_crash_at_every_point_of_a_flush_then_replay_is_exact(policy: Policy) -> None:
    _, clean_outbox = _crash_then_replay(policy, None)
    probe = JsonStore()
    probe_ledger = new_ledger(policy, probe)
    run(probe_ledger, 0, [ev("warm", 0, records=1)])
    before = probe.puts
    run(
        probe_ledger,
        1,
        [ev(f"e{i}", 1, records=10) for i in range(9)] + [ev("x", 2, "a2", records=3)],
    )
    writes = probe.puts - before
    assert writes >= 6
    expected_alerts = {(a["cap"], a["threshold"]) for a in alerts_of(clean_outbox)}
    assert expected_alerts == {
        ("tier:std:calls-15m", 0.8),
        ("tier:std:calls-15m", 1.0),
        ("org:acme:records-1h", 0.8),
    }
    for crash_after in range(writes):
        store, outbox = _crash_then_replay(policy, crash_after)
        assert slot(store, "app", "a1", "15m", 0).calls == 10, crash_after
        assert slot(store, "app", "a1", "15m", 0).records == 91, crash_after
        assert slot(store, "org", "acme", "1h", 0).records == 94, crash_after
        assert slot(store, "app", "a2", "15m", 0).calls == 1, crash_after
        fired = [(a["cap"], a["threshold"]) for a in alerts_of(outbox)]
        # each alert either survived in an outbox from before the crash or fired now: never both
        assert sorted(fired) == sorted(expected_alerts), crash_after
        stored = {p.record.id for p in stored_outbox(store) if p.record.kind == ALERTS}
        assert stored == {a["id"] for a in alerts_of(outbox)}, crash_after
        # the feed's newest record of each cap, pending or sent again, tells the final usage
        feed = {p.record.key: p.record.value for p in outbox if p.record.kind == QUOTA}
        assert feed["app:a1|tier:std:calls-15m"]["used"] == 10, crash_after
        assert feed["org:acme|org:acme:records-1h"]["used"] == 94, crash_after


def test_repeated_ids_are_counted_once(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store)
    r1 = run(ledger, 0, [ev("same", 1, records=4), ev("same", 1, records=4)])
    r2 = run(ledger, 1, [ev("same", 1, records=4), ev("other", 1, records=1)])
    assert (r1.stats.events, r1.stats.duplicates) == (1, 1)
    assert (r2.stats.events, r2.stats.duplicates) == (1, 1)
    assert slot(store, "app", "a1", "15m", 0).calls == 2
    assert slot(store, "app", "a1", "15m", 0).records == 5
    # the same id from another app is another call
    run(ledger, 2, [ev("same", 1, "a2")])
    assert slot(store, "app", "a2", "15m", 0).calls == 1


def test_alert_fires_on_the_crossing_event_once_and_rearms_next_window(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store)
    out = run(ledger, 0, [ev(f"e{i}", 1 + i * 0.1) for i in range(12)]).outbox
    alerts = alerts_of(out)
    assert [(a["threshold"], a["severity"], a["used"], a["event_id"]) for a in alerts] == [
        (0.8, "warning", 8, "e7"),
        (1.0, "critical", 10, "e9"),
    ]
    a = alerts[0]
    assert a["kind"] == "cap"
    assert a["subject_type"] == "app"
    assert a["subject"] == "a1"
    assert a["org_id"] == "acme"
    assert a["cap"] == "tier:std:calls-15m"
    assert a["window"] == {
        "size": "15m",
        "start": "2022-01-01T00:00:00Z",
        "end": "2022-01-01T00:15:00Z",
    }
    assert a["limit"] == 10
    assert a["crossed_at"] == "2022-01-01T00:01:42Z"
    assert a["late"] is False
    assert alerts_of(run(ledger, 1, [ev("more", 3)]).outbox) == []
    nxt = alerts_of(run(ledger, 2, [ev(f"n{i}", 16) for i in range(8)]).outbox)
    assert [(x["threshold"], x["window"]["start"]) for x in nxt] == [(0.8, "2022-01-01T00:15:00Z")]
    assert nxt[0]["id"] != alerts[0]["id"]


def test_the_crossing_event_is_found_in_arrival_order_across_windows(policy: Policy) -> None:
    """Events of one hour in two 15-minute windows, interleaved: the hour's records cap is
    crossed by the event whose addition, in arrival order, first reaches the level."""
    store = JsonStore()
    ledger = new_ledger(policy, store)
    batch = [ev("a", 1, records=30), ev("b", 20, records=30), ev("c", 2, records=30)]
    (alert,) = alerts_of(run(ledger, 0, batch).outbox)
    assert (alert["cap"], alert["used"], alert["event_id"]) == ("org:acme:records-1h", 90, "c")


def test_filtered_cap_counts_only_matching_events(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store)
    out = run(
        ledger,
        0,
        [ev("ok", 1, records=70), ev("err", 2, records=500, status=500), ev("ok2", 3, records=10)],
    ).outbox
    org = slot(store, "org", "acme", "1h", 0)
    assert org.records == 580
    assert org.capped == {"org:acme:records-1h": [2, 80]}
    assert [(a["cap"], a["used"]) for a in alerts_of(out)] == [("org:acme:records-1h", 80)]


def test_window_closes_once_progress_passes_end_plus_grace(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store)
    run(ledger, 0, [ev("a", 1, records=3, endpoint="/x"), ev("b", 14, "a2")])
    assert windows_of(run(ledger, 1, [ev("c", 16)]).outbox) == []  # events alone close nothing
    assert windows_of(progress(ledger, 2, 15.9).outbox) == []  # 15:54 < 15:00 + 1m
    closed = windows_of(progress(ledger, 3, 16).outbox)
    assert sorted((w["subject"], w["window"]["size"]) for w in closed) == [
        ("a1", "15m"),
        ("a2", "15m"),
        ("acme", "15m"),  # organisations are counted in every window a cap uses, too
    ]
    a1 = next(w for w in closed if w["subject"] == "a1")
    assert a1["revision"] == 0
    assert (a1["calls"], a1["records"]) == (1, 3)
    assert a1["endpoints"] == {"/x": {"calls": 1, "records": 3}}
    assert a1["recipients"] == {}
    assert a1["caps"] == [
        {"cap": "tier:std:calls-15m", "metric": "calls", "limit": 10, "used": 1, "utilization": 0.1}
    ]
    assert a1["base"] == "complete"
    assert slot(store, "app", "a1", "15m", 0).rev == 0


def test_late_event_amends_the_closed_window_with_a_new_revision(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store)
    run(ledger, 0, [ev(f"e{i}", 1) for i in range(7)])
    run(ledger, 1, [ev("push", 20)])
    progress(ledger, 2, 20)  # closes 00:00-00:15
    late = run(ledger, 3, [ev("late", 5, records=2)])
    assert late.stats.late == 1
    amend = [w for w in windows_of(late.outbox) if w["window"]["size"] == "15m"]
    assert [
        (w["subject"], w["revision"], w["calls"], w["records"], w["late_events"]) for w in amend
    ] == [
        ("a1", 1, 8, 2, 1),
        ("acme", 1, 8, 2, 1),
    ]
    alert = alerts_of(late.outbox)
    assert [(a["threshold"], a["late"], a["used"]) for a in alert] == [(0.8, True, 8)]
    again = run(ledger, 4, [ev("late2", 6)])
    assert [
        (w["subject"], w["revision"])
        for w in windows_of(again.outbox)
        if w["window"]["size"] == "15m"
    ] == [
        ("a1", 2),
        ("acme", 2),
    ]


def test_a_late_first_event_for_a_window_is_revision_one(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store)
    run(ledger, 0, [ev("now", 100)])
    progress(ledger, 1, 100)
    out = windows_of(run(ledger, 2, [ev("old", 1, "a2")]).outbox)
    assert sorted((w["subject"], w["window"]["size"], w["revision"], w["calls"]) for w in out) == [
        ("a2", "15m", 1, 1),
        ("a2", "1h", 1, 1),
        ("acme", "15m", 1, 1),
        ("acme", "1h", 1, 1),
    ]


def test_past_the_late_horizon_a_window_keeps_its_totals_and_revisions(policy: Policy) -> None:
    """After the late horizon a window is compacted: its breakdowns go, but calls, records,
    per-cap usage, fired thresholds and the revision stay, so a later event publishes the whole
    total (base "expired", a new revision and id) and fires a threshold the whole total
    crosses, never one that fired before."""
    store = JsonStore()
    ledger = new_ledger(policy, store, late_horizon_ms=30 * MIN)
    first = run(ledger, 0, [ev(f"e{i}", 1, endpoint="/a", recipient="press") for i in range(8)])
    assert [a["threshold"] for a in alerts_of(first.outbox)] == [0.8]
    closing = progress(ledger, 1, 16)
    final = next(w for w in windows_of(closing.outbox) if w["subject"] == "a1")
    assert (final["revision"], final["calls"], final["recipients"]) == (
        0,
        8,
        {"press": {"calls": 8, "records": 0}},
    )
    progress(ledger, 2, 16 + 31)  # past end + grace + late horizon
    compacted = slot(store, "app", "a1", "15m", 0)
    assert (compacted.compact, compacted.calls, compacted.endpoints) == (True, 8, {})
    late = run(ledger, 3, [ev("late1", 2, endpoint="/b"), ev("late2", 3, endpoint="/b")])
    (record,) = [
        w for w in windows_of(late.outbox) if w["subject"] == "a1" and w["window"]["size"] == "15m"
    ]
    assert record["base"] == "expired"
    assert (record["revision"], record["calls"], record["late_events"]) == (1, 10, 2)
    assert record["endpoints"] == {"/b": {"calls": 2, "records": 0}}  # since the compaction
    assert record["id"] != final["id"]
    # 10 calls: the 100% threshold fires now; the 80% one fired long ago and does not again
    assert [(a["threshold"], a["used"], a["late"]) for a in alerts_of(late.outbox)] == [
        (1.0, 10, True)
    ]


def test_events_past_the_history_horizon_are_dead_lettered(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store, late_horizon_ms=30 * MIN, history_horizon_ms=DAY)
    ledger.acknowledge(run(ledger, 0, [ev("a", 1)]).outbox)
    ledger.acknowledge(progress(ledger, 1, 3 * 24 * 60).outbox)  # three days on: closed...
    progress(ledger, 2, 3 * 24 * 60 + 2)  # ... and, once published, forgotten
    assert not any(k.startswith("s|app|a1|15m|") for k in store.data)
    old = run(ledger, 3, [ev("ancient", 5, records=3), ev("recent", 3 * 24 * 60 - 1)])
    assert old.stats.too_late == 1
    (letter,) = [p.record for p in old.outbox if p.record.kind == DEAD_LETTERS]
    assert letter.value["id"] == "ancient"
    assert letter.value["records"] == 3
    headers = dict(letter.headers)
    assert headers["meter-reason"] == "too_late"
    assert headers["meter-source-offset"] == "3"
    assert not any(k.endswith(f"|{T0}") for k in store.data if k.startswith("s|"))
    # The dead letter waits in the partition's meta until it is published.
    recovered = new_ledger(policy, store, late_horizon_ms=30 * MIN, history_horizon_ms=DAY)
    waiting = {p.record.id: p.key for p in recovered.bootstrap(store.items())}
    assert waiting[letter.id] == "w|0"


def test_closed_windows_and_old_ids_are_removed_after_their_horizons(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(
        policy,
        store,
        late_horizon_ms=30 * MIN,
        history_horizon_ms=60 * MIN,
        dedup_horizon_ms=10 * MIN,
    )
    ledger.acknowledge(run(ledger, 0, [ev("a", 1)], ingest=NOW).outbox)
    ledger.acknowledge(run(ledger, 1, [ev("b", 200)], ingest=NOW + 5 * MIN).outbox)
    closing = progress(ledger, 2, 200)  # closes and compacts everything from minute 1
    assert any(k.startswith("s|") and k.endswith(f"|{T0}") for k in store.data)
    ledger.acknowledge(closing.outbox)
    run(ledger, 3, [ev("c", 202)], ingest=NOW + 12 * MIN)
    progress(ledger, 4, 202)  # ... and forgets it: 1 + 1 + 30 + 60 minutes < 202
    keys = set(store.data)
    assert not any(k.startswith("s|") and k.endswith(f"|{T0}") for k in keys)
    assert "a1|a" not in ledger.ids  # reached Kafka more than 10 minutes before the newest
    assert "a1|b" in ledger.ids
    stored_ids = {
        i
        for k, raw in store.items()
        if isinstance(b := decode(k, raw), IdBlock)
        for i in b.digests()
    }
    assert stored_ids == {digest("a1|b"), digest("a1|c")}
    assert any(k.startswith("s|app|a1|15m|") for k in keys)  # the current window stays
    # Once forgotten, a repeat counts again: that is what the horizon bounds.
    run(ledger, 5, [ev("d", 203)], ingest=NOW + 20 * MIN)  # "b" is now 15 minutes old
    assert run(ledger, 6, [ev("b", 200)], ingest=NOW + 21 * MIN).stats.duplicates == 0


def test_ids_are_remembered_by_ingest_time_so_a_late_call_is_deduplicated_too(
    policy: Policy,
) -> None:
    """A call whose event time is far behind the watermark (here a day, ten times the dedup
    horizon) is still recognised when it is sent again a minute later, and the memory of it
    survives a restart."""
    store = JsonStore()
    ledger = new_ledger(policy, store, dedup_horizon_ms=10 * MIN)
    run(ledger, 0, [ev("now", 24 * 60)], ingest=NOW)
    progress(ledger, 1, 24 * 60)
    first = run(ledger, 2, [ev("old", 1)], ingest=NOW + MIN)
    assert first.stats.late == 1
    again = run(ledger, 3, [ev("old", 1)], ingest=NOW + 2 * MIN)
    assert (again.stats.events, again.stats.duplicates) == (0, 1)
    recovered = new_ledger(policy, store, dedup_horizon_ms=10 * MIN)
    recovered.bootstrap(store.items())
    assert recovered.meta.ingest_ms == NOW + 2 * MIN
    retried = run(recovered, 4, [ev("old", 1)], ingest=NOW + 9 * MIN)
    assert (retried.stats.events, retried.stats.duplicates) == (0, 1)
    assert slot(store, "app", "a1", "15m", 0).calls == 1


def test_unsent_outbox_survives_and_is_returned_by_bootstrap(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store)
    out = run(ledger, 0, [ev(f"e{i}", 1) for i in range(8)]).outbox
    assert [p.record.kind for p in out] == [ALERTS, QUOTA, QUOTA]  # the 80% alert; app, org caps
    recovered = new_ledger(policy, store).bootstrap(store.items())
    assert sorted(p.record.id for p in recovered) == sorted(p.record.id for p in out)
    ledger.acknowledge(out)
    assert new_ledger(policy, store).bootstrap(store.items()) != []  # not flushed yet
    ledger.flush()
    assert new_ledger(policy, store).bootstrap(store.items()) == []


def test_unknown_app_is_counted_and_alerted_once_per_day(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store)
    r1 = run(ledger, 0, [ev("u1", 1, "ghost", org_id="shadow"), ev("u2", 2, "ghost")])
    replay = run(ledger, 0, [ev("u1", 1, "ghost", org_id="shadow"), ev("u2", 2, "ghost")])
    assert (replay.stats.events, replay.stats.unknown_app) == (0, 0)  # counted the first time
    r2 = run(ledger, 1, [ev("u3", 3, "ghost")])
    r3 = run(ledger, 2, [ev("u4", 60 * 24 + 1, "ghost")])
    kinds = [
        (a["kind"], a["subject"], a["window"]["start"])
        for a in alerts_of(r1.outbox + r2.outbox + r3.outbox)
    ]
    assert kinds == [
        ("unknown_app", "ghost", "2022-01-01T00:00:00Z"),
        ("unknown_app", "ghost", "2022-01-02T00:00:00Z"),
    ]
    assert r1.stats.unknown_app == 2
    assert slot(store, "app", "ghost", "15m", 0).calls == 3
    assert slot(store, "org", "shadow", "1h", 0).calls == 1  # claimed org of an unknown app


def test_unknown_app_alerts_are_limited_per_partition_and_day_through_a_restart(
    policy: Policy,
) -> None:
    """Three alerts a day: ghosts 0-2 get theirs, ghost 3 raises the one flood alert, later
    ghosts none; every call is counted; a ledger rebuilt from the store mid-day goes on from the
    same budget, and the next day starts a new one."""
    store = JsonStore()
    ledger = new_ledger(policy, store, unknown_app_alerts=3)
    out = run(ledger, 0, [ev(f"u{i}", 1, f"ghost{i}") for i in range(2)]).outbox
    out += run(ledger, 1, [ev("u1b", 2, "ghost1"), ev("u2", 2, "ghost2")]).outbox
    ledger = new_ledger(policy, store, unknown_app_alerts=3)  # a restart
    ledger.bootstrap(store.items())
    out += run(ledger, 2, [ev(f"u{i}", 3, f"ghost{i}") for i in range(3, 8)]).outbox
    out += run(ledger, 3, [ev("u8", 4, "ghost8"), ev("u0b", 4, "ghost0")]).outbox
    out += run(ledger, 4, [ev("n9", 60 * 24 + 1, "ghost9")]).outbox
    alerts = alerts_of(out)
    assert [(a["kind"], a["subject"], a["window"]["start"][:10]) for a in alerts] == [
        ("unknown_app", "ghost0", "2022-01-01"),
        ("unknown_app", "ghost1", "2022-01-01"),
        ("unknown_app", "ghost2", "2022-01-01"),
        ("unknown_app_flood", "*", "2022-01-01"),
        ("unknown_app", "ghost9", "2022-01-02"),
    ]
    flood = alerts[3]
    assert (flood["severity"], flood["event_id"]) == ("critical", "u3")
    assert (flood["routed_partition"], flood["alerts_per_day"]) == ("0", "3")
    assert [slot(store, "app", f"ghost{i}", "15m", 0).calls for i in range(9)] == [
        2, 2, 1, 1, 1, 1, 1, 1, 1
    ]  # fmt: skip


def test_unknown_apps_past_the_limit_are_counted_together_through_a_restart(
    policy: Policy,
) -> None:
    """Two unknown apps a month under their own id: ghost0 and ghost1 (ghost1 back later still
    is); ghosts 2-4 are counted as app `*`, all calls exactly once; a ledger rebuilt from the
    store goes on with the same decisions, and a new month starts a new budget."""
    store = JsonStore()
    ledger = new_ledger(policy, store, max_unknown_apps=2)
    stats = [run(ledger, 0, [ev(f"u{i}", 1, f"ghost{i}") for i in range(3)]).stats]
    ledger = new_ledger(policy, store, max_unknown_apps=2)  # a restart
    ledger.bootstrap(store.items())
    stats.append(run(ledger, 1, [ev("u1b", 2, "ghost1"), ev("u3", 2, "ghost3")]).stats)
    stats.append(run(ledger, 2, [ev("u4", 3, "ghost4", org_id="shadow")]).stats)
    stats.append(run(ledger, 3, [ev("u5", 31 * 24 * 60 + 1, "ghost5")]).stats)  # February
    assert slot(store, "app", "ghost0", "15m", 0).calls == 1
    assert slot(store, "app", "ghost1", "15m", 0).calls == 2
    assert slot(store, "app", "*", "15m", 0).calls == 3  # ghosts 2, 3 and 4
    assert slot(store, "app", "*", "15m", 0).org is None  # not whichever org one claimed
    assert slot(store, "org", "shadow", "15m", 0).calls == 1  # its org still counts it
    windows = [k for k in store.data if k.startswith("s|")]
    assert not any(f"|ghost{i}|" in key for i in (2, 3, 4) for key in windows)
    assert slot(store, "app", "ghost5", "15m", 31 * 24 * 60).calls == 1
    assert [s.unknown_untracked for s in stats] == [1, 1, 1, 0]
    assert sum(s.unknown_app for s in stats) == 7


def _crash_then_replay_unknown(crash_after: int | None) -> JsonStore:
    policy = load_policy(POLICY)
    store = JsonStore()
    ledger = new_ledger(policy, store, max_unknown_apps=3)
    run(ledger, 0, [ev("warm", 0, "ghost0")])
    batch = [ev(f"u{i}", 1, f"ghost{i % 6}") for i in range(12)]
    ledger.apply(1, batch, NOW, NOW)
    if crash_after is None:
        store.flushed = ledger.flush()  # type: ignore[attr-defined]
        return store
    store.fail_after = store.puts + crash_after
    with pytest.raises(RuntimeError):
        ledger.flush()
    store.fail_after = None
    recovered = new_ledger(policy, store, max_unknown_apps=3)
    recovered.bootstrap(store.items())
    run(recovered, 1, batch)
    return store


def test_a_crash_at_every_point_of_a_flush_never_counts_an_unknown_app_twice() -> None:
    """The decision to count an unknown app under its own id is written before its windows: a
    replay after any partial flush counts each call once, under its own id or under `*`."""
    clean = _crash_then_replay_unknown(None)
    apps = [f"ghost{i}" for i in range(6)] + ["*"]

    def calls(store: JsonStore) -> dict[str, int]:
        return {
            a: slot(store, "app", a, "15m", 0).calls
            for a in apps
            if f"s|app|{a}|15m|{T0}" in store.data
        }

    assert calls(clean) == {"ghost0": 3, "ghost1": 2, "ghost2": 2, "*": 6}
    writes = clean.flushed  # type: ignore[attr-defined]
    assert writes >= 15
    for crash_after in range(writes):
        got = calls(_crash_then_replay_unknown(crash_after))
        assert sum(got.values()) == 13, (crash_after, got)


def test_government_recipient_needs_a_recorded_notice(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store)
    out = run(
        ledger,
        0,
        [
            ev("g1", 1, "a1", recipient="government", records=4),
            ev("g2", 2, "a1", recipient="Government", records=6),
            ev("g3", 3, "g1", recipient="government"),
            ev("n1", 4, "a2", recipient="press"),
        ],
    ).outbox
    got = [(a["kind"], a["subject"], a["app_id"], a["severity"]) for a in alerts_of(out)]
    assert got == [("restricted_use", "acme", "a1", "critical")]
    # How much went to whom, in the window totals (a rule's recipient under the rule's name).
    assert slot(store, "org", "acme", "1h", 0).recipients == {
        "government": [2, 10],
        "press": [1, 0],
    }


def test_the_recipient_breakdown_is_bounded_but_keeps_restricted_recipients(
    policy: Policy,
) -> None:
    store = JsonStore()
    ledger = PartitionLedger(0, policy, LedgerSettings(max_recipients=3), store)
    calls = [ev(f"r{i}", 1, recipient=f"partner-{i}") for i in range(5)]
    run(ledger, 0, [*calls, ev("gov", 2, recipient="government")])
    assert slot(store, "app", "a1", "15m", 0).recipients == {
        "partner-0": [1, 0],
        "partner-1": [1, 0],
        "partner-2": [1, 0],
        "(other)": [2, 0],
        "government": [1, 0],
    }


def test_current_cap_usage_follows_the_newest_open_window(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store)
    run(ledger, 0, [ev("a", 1), ev("b", 2), ev("c", 3, records=50)])
    u = ledger.usage[("app", "a1", "tier:std:calls-15m")]
    assert (u.used, u.limit, u.window, u.start_ms) == (3, 10, "15m", T0)
    org = ledger.usage[("org", "acme", "org:acme:records-1h")]
    assert (org.used, org.metric) == (50, "records")
    run(ledger, 1, [ev("d", 16)])  # a new window
    progress(ledger, 2, 16)  # the old one closes at 16:00
    u = ledger.usage[("app", "a1", "tier:std:calls-15m")]
    assert (u.used, u.start_ms) == (1, T0 + 15 * MIN)
    run(ledger, 3, [ev("e", 5)])  # late: amends the closed window, not the gauge
    assert ledger.usage[("app", "a1", "tier:std:calls-15m")].used == 1
    run(ledger, 4, [ev("f", 90)])
    progress(ledger, 5, 90)  # closes everything ending by 1:29
    assert ("app", "a1", "tier:std:calls-15m") in ledger.usage  # the 1:30 window is open
    assert ledger.usage[("app", "a1", "tier:std:calls-15m")].start_ms == T0 + 90 * MIN
    recovered = new_ledger(policy, store)
    recovered.bootstrap(store.items())
    assert recovered.usage == ledger.usage


def test_a_late_call_does_not_raise_a_day_alert_twice(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store, late_horizon_ms=MIN)
    day = 24 * 60
    out: list[Pending] = []
    for offset, call in enumerate(
        [
            ev("u1", 10 * 60, "ghost"),
            ev("u2", day + 2, "ghost"),  # the next day: its own alert
            ev("u3", 23 * 60, "ghost"),  # late, in the first day again
        ]
    ):
        sent = run(ledger, 2 * offset, [call]).outbox
        sent += progress(ledger, 2 * offset + 1, day * 2).outbox  # everything closes, compacts
        ledger.acknowledge(sent)  # published, so nothing pins the state
        out += sent
    ids = [a["id"] for a in alerts_of(out) if a["kind"] == "unknown_app"]
    assert len(ids) == 2
    assert len(set(ids)) == 2


def test_the_last_source_offset_seen_is_kept_so_a_skipped_record_is_noticed(
    policy: Policy,
) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store)
    assert ledger.next_offset() is None
    run(ledger, 7, [ev("a", 1)])
    ledger.skip(8)  # a control record (no events)
    ledger.flush()
    assert ledger.next_offset() == 9
    run(ledger, 3, [ev("a", 1)])  # a replay does not move it back
    assert ledger.next_offset() == 9
    recovered = new_ledger(policy, store)
    recovered.bootstrap(store.items())
    assert recovered.next_offset() == 9


def test_an_unknown_app_claiming_several_orgs_has_one_owner_per_state_key(policy: Policy) -> None:
    """The router sends such an app's events to two ledgers: app totals on the app's partition
    (level "app"; its events without a claim too), org totals on the claimed org's ("org")."""
    app_store, org_store = JsonStore(), JsonStore()
    app_side = PartitionLedger(0, policy, LedgerSettings(grace_ms=MIN), app_store)
    org_side = PartitionLedger(1, policy, LedgerSettings(grace_ms=MIN), org_store)
    claims_acme = ev("u1", 1, "u", records=5, org_id="acme")
    claims_beta = ev("u2", 2, "u", records=7, org_id="beta")
    no_claim = ev("u3", 3, "u", records=1)
    first = app_side.apply(0, [claims_acme, claims_beta, no_claim], NOW, NOW, ["app", "app", None])
    org_side.apply(0, [claims_acme], NOW, NOW, ["org"])
    app_side.flush()
    org_side.flush()
    assert slot(app_store, "app", "u", "15m", 0).calls == 3
    assert not any(k.startswith("s|org|") for k in app_store.data)
    org_raw = org_store.get(f"s|org|acme|15m|{T0}")
    assert org_raw is not None
    assert decode(f"s|org|acme|15m|{T0}", org_raw).records == 5  # type: ignore[union-attr]
    assert not any(k.startswith(("s|app|", "m|")) for k in org_store.data)
    # one unknown-app alert, where the app is; events counted once, org usage where the org is
    assert [a["kind"] for a in alerts_of(first.outbox)] == ["unknown_app"]
    assert first.stats.events == 3
    assert first.stats.calls_by_org == {}
    second = org_side.apply(2, [ev("u4", 4, "u", org_id="acme")], NOW, NOW, ["org"])
    assert (second.stats.events, second.stats.calls_by_org) == (0, {"acme": 1})
    # A retry of such an event is one repeat, counted where the app is (as events are).
    retry_app = app_side.apply(3, [claims_acme], NOW, NOW, ["app"])
    retry_org = org_side.apply(3, [claims_acme], NOW, NOW, ["org"])
    assert (retry_app.stats.duplicates, retry_org.stats.duplicates) == (1, 0)
    # both halves on one ledger (the app and the org hash to one partition): both count
    one = JsonStore()
    both = PartitionLedger(0, policy, LedgerSettings(grace_ms=MIN), one)
    both.apply(0, [claims_acme, claims_acme], NOW, NOW, ["app", "org"])
    both.flush()
    assert slot(one, "app", "u", "15m", 0).calls == 1
    assert slot(one, "org", "acme", "15m", 0).calls == 1


def test_a_replay_after_the_windows_expired_changes_nothing(policy: Policy) -> None:
    """Records replayed after a rebalance can be older than state that has since been forgotten
    (the consumer's committed offset may lag far behind). They must not recreate the windows
    and fire their alerts again."""
    store = JsonStore()
    ledger = new_ledger(policy, store, late_horizon_ms=30 * MIN, history_horizon_ms=30 * MIN)
    batch = [ev(f"e{i}", 1) for i in range(10)]  # 10 calls: the 15-minute cap's thresholds
    fired = alerts_of(run(ledger, 0, batch).outbox)
    assert fired
    run(ledger, 1, [ev("later", 24 * 60)])
    done = progress(ledger, 2, 24 * 60)  # a day later: everything closes
    ledger.acknowledge(done.outbox)
    ledger.acknowledge(stored_outbox(store))
    progress(ledger, 3, 24 * 60 + 1)  # ... and is forgotten
    assert not any(k.startswith("s|app|a1|15m|") and k.endswith(f"|{T0}") for k in store.data)
    recovered = new_ledger(policy, store, late_horizon_ms=30 * MIN, history_horizon_ms=30 * MIN)
    recovered.bootstrap(store.items())
    again = run(recovered, 0, batch)
    assert again.outbox == []
    assert not any(k.endswith(f"|{T0}") for k in store.data if k.startswith("s|"))


def test_the_meta_key_is_written_last_so_it_never_claims_a_partial_flush(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store)
    run(ledger, 0, [ev("a", 1)])
    # many keys to write (40 apps' windows), so the meta key is not last by chance
    ledger.apply(1, [ev(f"b{i}", 2, f"app{i}", records=1) for i in range(40)], NOW, NOW)
    order: list[str] = []
    put = store.put

    def recording_put(key: str, value: list[Any]) -> None:
        order.append(key)
        put(key, value)

    store.put = recording_put  # type: ignore[method-assign]
    ledger.flush()
    assert len(order) > 100
    assert order[-1] == "w|0"
    store.put = put  # type: ignore[method-assign]
    # a flush that dies part-way leaves the previous meta: the record is replayed key by key
    ledger.apply(2, [ev(f"c{i}", 2, f"app{i}") for i in range(40)], NOW, NOW)
    store.fail_after = store.puts + 30
    with pytest.raises(RuntimeError):
        ledger.flush()
    recovered = new_ledger(policy, store)
    recovered.bootstrap(store.items())
    assert recovered.durable_offset == 1


def test_progress_survives_a_restart_and_a_replayed_report_moves_nothing(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store)
    run(ledger, 0, [ev("a", 1)])
    progress(ledger, 1, 30)
    recovered = new_ledger(policy, store)
    recovered.bootstrap(store.items())
    assert (recovered.event_wm, recovered.close_wm) == (T0 + 30 * MIN, T0 + 30 * MIN)
    assert progress(recovered, 1, 10).outbox == []  # the same record again: skipped whole
    progress(recovered, 2, 10, stamp=NOW - 1)  # an older report from another router
    assert recovered.event_wm == T0 + 30 * MIN

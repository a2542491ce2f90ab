"""The quota feed (`quota-state`): one record per subject and cap, at once on a state change or a
new window, coalesced while usage only moves, refreshed after a restart, removed with a tombstone
when the policy drops the cap."""

from __future__ import annotations

from typing import Any

import pytest

from meter.core.ledger import Pending
from meter.core.outputs import QUOTA
from meter.core.policy import Policy, load_policy
from tests.harness.ledger import NOW, POLICY, JsonStore, ev, new_ledger, quota_of, removed, run

A1_CALLS = "app:a1|tier:std:calls-15m"
ACME_RECORDS = "org:acme|org:acme:records-1h"
SEC = 1_000


@pytest.fixture
def policy() -> Policy:
    return load_policy(POLICY)


def report(ledger: Any, offset: int, now: int) -> list[Pending]:
    """A progress report that moves nothing but the clock (the router's heartbeat)."""
    out = ledger.report(offset, 1, now, {0: (None, False)}, now).outbox
    ledger.flush()
    return list(out)


def sent(ledger: Any, applied: Any) -> None:
    """The worker published `applied`'s outbox: acknowledge it and flush."""
    ledger.acknowledge(applied.outbox)
    ledger.flush()


def test_the_first_event_of_a_window_publishes_every_cap_at_once(policy: Policy) -> None:
    ledger = new_ledger(policy, JsonStore())
    out = run(ledger, 7, [ev("e1", 1, records=5, endpoint="/search", status=200)]).outbox
    feed = quota_of(out)
    assert set(feed) == {A1_CALLS, ACME_RECORDS}
    calls = feed[A1_CALLS]
    assert calls["subject"] == {"type": "app", "id": "a1", "org_id": "acme"}
    assert (calls["cap"], calls["name"], calls["metric"]) == (
        "tier:std:calls-15m",
        "calls-15m",
        "calls",
    )
    assert calls["window"] == {
        "size": "15m", "start": "2022-01-01T00:00:00Z", "end": "2022-01-01T00:15:00Z",
    }  # fmt: skip
    assert (calls["limit"], calls["used"], calls["remaining"]) == (10, 1, 9)
    assert (calls["utilization"], calls["state"], calls["thresholds_crossed"]) == (0.1, "ok", [])
    assert calls["reset_at"] == "2022-01-01T00:15:00Z"
    assert calls["seq"] == 7
    records = feed[ACME_RECORDS]
    assert (records["used"], records["remaining"]) == (5, 95)
    assert {p.record.key: p.record.id for p in out if p.record.kind == QUOTA}[A1_CALLS] == (
        f"{A1_CALLS}@7"
    )


def test_moving_usage_is_coalesced_to_one_update_per_interval(policy: Policy) -> None:
    ledger = new_ledger(policy, JsonStore(), quota_interval_ms=SEC)
    run(ledger, 0, [ev("e1", 1)], now=NOW)
    # usage moves twice within the interval: nothing yet (the org cap counts records: none moved)
    assert A1_CALLS not in quota_of(run(ledger, 1, [ev("e2", 1)], now=NOW + 100).outbox)
    assert A1_CALLS not in quota_of(run(ledger, 2, [ev("e3", 1)], now=NOW + 200).outbox)
    assert quota_of(report(ledger, 3, NOW + 999)) == {}  # the interval has not passed
    feed = quota_of(report(ledger, 4, NOW + SEC))
    assert feed[A1_CALLS]["used"] == 3
    assert feed[A1_CALLS]["seq"] == 2  # the offset of the last record that moved it
    assert quota_of(report(ledger, 5, NOW + 5 * SEC)) == {}  # nothing moved since
    # after a quiet interval the next movement goes out at once
    moved = quota_of(run(ledger, 6, [ev("e4", 1)], now=NOW + 5 * SEC).outbox)
    assert moved[A1_CALLS]["used"] == 4


def test_a_state_change_goes_out_at_once_inside_the_interval(policy: Policy) -> None:
    ledger = new_ledger(policy, JsonStore(), quota_interval_ms=60 * SEC)
    run(ledger, 0, [ev(f"e{i}", 1) for i in range(7)])
    feed = quota_of(run(ledger, 1, [ev("e7", 1)], now=NOW + 1).outbox)  # 8 of 10: warning
    assert (feed[A1_CALLS]["state"], feed[A1_CALLS]["thresholds_crossed"]) == ("warning", [0.8])
    assert A1_CALLS not in quota_of(run(ledger, 2, [ev("e8", 1)], now=NOW + 2).outbox)  # 9
    feed = quota_of(run(ledger, 3, [ev("e9", 1)], now=NOW + 3).outbox)  # 10 of 10
    assert (feed[A1_CALLS]["state"], feed[A1_CALLS]["remaining"]) == ("exceeded", 0)
    assert feed[A1_CALLS]["thresholds_crossed"] == [0.8, 1.0]


def test_a_new_window_goes_out_at_once_and_an_older_one_never_overwrites_it(
    policy: Policy,
) -> None:
    ledger = new_ledger(policy, JsonStore(), quota_interval_ms=60 * SEC)
    run(ledger, 0, [ev("e1", 1)])
    feed = quota_of(run(ledger, 1, [ev("e2", 16)], now=NOW + 1).outbox)
    assert (feed[A1_CALLS]["window"]["start"], feed[A1_CALLS]["used"]) == (
        "2022-01-01T00:15:00Z", 1,
    )  # fmt: skip
    # a late event for the previous window changes that window, not the feed's current one
    late = run(ledger, 2, [ev("e3", 2)], now=NOW + 2 * 60 * SEC).outbox
    assert A1_CALLS not in quota_of(late)
    assert quota_of(report(ledger, 3, NOW + 10 * 60 * SEC)) == {}


def test_a_restart_sends_every_open_window_again_with_the_first_report(
    policy: Policy,
) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store, quota_interval_ms=60 * SEC)
    sent(ledger, run(ledger, 0, [ev("e1", 1)]))
    sent(ledger, run(ledger, 1, [ev("e2", 1)], now=NOW + 1))  # coalesced: waits
    # the worker dies before the interval passes; the update that waited lived in memory only
    restarted = new_ledger(policy, store, quota_interval_ms=60 * SEC)
    assert quota_of(restarted.bootstrap(store.items())) == {}  # everything was sent
    feed = quota_of(report(restarted, 2, NOW + 2))
    assert feed[A1_CALLS]["used"] == 2
    assert feed[ACME_RECORDS]["used"] == 0


def test_seq_only_grows_per_key(policy: Policy) -> None:
    ledger = new_ledger(policy, JsonStore(), quota_interval_ms=SEC)
    seqs = []
    for offset in range(30):
        now = NOW + offset * 400
        out = run(ledger, 2 * offset, [ev(f"e{offset}", 1 + offset // 5)], now=now).outbox
        out += report(ledger, 2 * offset + 1, now + 1)
        seqs += [v["seq"] for k, v in quota_of(out).items() if k == A1_CALLS and v]
    assert len(seqs) > 5
    assert seqs == sorted(seqs)


def test_a_cap_that_leaves_the_policy_gets_a_tombstone_once(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store)
    sent(ledger, run(ledger, 0, [ev("e1", 1, records=3, status=200)]))
    smaller = dict(POLICY, orgs={**POLICY["orgs"], "acme": {"name": "Acme"}})
    restarted = new_ledger(load_policy(smaller), store)
    gone = restarted.bootstrap(store.items())
    assert removed(gone) == [ACME_RECORDS]
    assert quota_of(gone) == {}
    restarted.acknowledge(gone)
    restarted.flush()
    again = new_ledger(load_policy(smaller), store)
    assert removed(again.bootstrap(store.items())) == []
    # an app that leaves the policy loses its caps' records the same way
    no_a1 = dict(POLICY, apps={k: v for k, v in POLICY["apps"].items() if k != "a1"})
    assert removed(new_ledger(load_policy(no_a1), store).bootstrap(store.items())) == [A1_CALLS]


def test_records_of_unsent_updates_are_replaced_not_queued(policy: Policy) -> None:
    store = JsonStore()
    ledger = new_ledger(policy, store, quota_interval_ms=0)
    for offset in range(5):
        run(ledger, offset, [ev(f"e{offset}", 1)], now=NOW + offset)  # never acknowledged
    pending = new_ledger(policy, store).bootstrap(store.items())
    calls = [p.record.value for p in pending if p.record.key == A1_CALLS]
    assert len(calls) == 1
    assert calls[0]["used"] == 5

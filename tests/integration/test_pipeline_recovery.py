"""End to end: exactness under failure. A worker is SIGKILLed twice while a stream is being
produced and processed, and restarted (with its data dir, or a new one so the state must come back
from the changelog topic); two workers share the partitions while one stops and another joins.
Afterwards every window's final totals must be exact and every alert published exactly once."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from tests.harness.data import dumps, event, ms, values_of
from tests.harness.deployment import Deployment
from tests.harness.processes import wait_until
from tests.harness.recovery import (
    POLICY,
    alerts_reach,
    finish_and_check,
    start_stream,
    stream,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.mark.parametrize("data_dir", ["same-data-dir", "new-data-dir", "memory-store"])
def test_sigkill_mid_stream_and_restart_counts_exactly_once(
    deployments: Callable[..., Deployment], data_dir: str
) -> None:
    """`memory-store`: `--store memory` (no local files: every start restores the changelog)."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    memory = ("--store", "memory") if data_dir == "memory-store" else ()
    d = deployments(POLICY, partitions=4, extra=memory)
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


def test_sigkill_while_rocksdb_is_ahead_of_the_changelog_then_restart_with_its_data_dir(
    deployments: Callable[..., Deployment],
) -> None:
    """The state that lost counts, made certain: the worker runs with its changelog held back
    (`slow_changelog`), so at the SIGKILL its RocksDB holds writes the changelog never got and
    its persisted offset is behind the changelog's end. The restart reuses the data dir.

    With faust's per-key changelog this lost counts unless the local files were discarded after
    an unclean exit (`meter.adapters.state_dir`). Since a flush is shipped whole (RocksDB, then
    the changelog, `meter.adapters.changelog`), a restart over such files no longer reverts some
    keys and not others: this test passed 2 of 2 runs with that guard disabled on purpose. The
    guard stays (keys only RocksDB got would be missing from a later changelog-only restore) and
    is unit-tested in test_state_dir; this test keeps the restart over such files exact."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    d = deployments(POLICY, partitions=4)
    batches = stream(rng)
    sent = [ev for b in batches for ev in b]
    worker = d.start_worker(label="first", module="tests.integration.slow_changelog")
    producer = start_stream(d, batches, rng)
    wait_until(alerts_reach(d, 40), 120, interval=0.3, what="40 alerts", abort=d.died)
    print(f"kill: {producer.sent} of {len(batches)} records produced")
    worker.kill()
    d.evict(worker)
    d.start_worker(data_dir=worker.data_dir, label="second")
    producer.finish()
    finish_and_check(d, sent)
    d.stop_all()


def test_two_workers_share_partitions_through_rebalances(
    deployments: Callable[..., Deployment],
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    d = deployments(POLICY, partitions=4)
    batches = stream(rng)
    sent = [ev for b in batches for ev in b]
    first = d.start_worker(label="a")
    second = d.start_worker(label="b")
    both = sorted([first.web_port, second.web_port])
    wait_until(lambda: d.members() == both, 90, what="both workers to get partitions")
    producer = start_stream(d, batches, rng)

    wait_until(alerts_reach(d, 40), 120, interval=0.3, what="40 alerts", abort=d.died)
    first.stop()  # clean stop mid-stream: its partitions move to the other worker
    # Every changelog record it queued was acknowledged: its local state may be reused.
    assert (first.data_dir / "clean-stop").exists()
    wait_until(alerts_reach(d, 110), 120, interval=0.3, what="110 alerts", abort=d.died)
    d.start_worker(label="c")  # a new member with an empty data dir takes some back
    producer.finish()
    finish_and_check(d, sent)
    assert len(d.running()) == 2
    d.stop_all()


GAP_POLICY = """
version: 1
tiers:
  std:
    caps:
      - {id: calls-15m, metric: calls, window: 15m, limit: 1000}
orgs:
  acme:
    caps:
      - {id: records-1h, metric: records, window: 1h, limit: 100000}
apps:
  acme-1: {org: acme, tier: std}
"""


def test_routed_records_the_consumer_skipped_are_read_back_and_counted(
    deployments: Callable[..., Deployment],
) -> None:
    """faust can commit past routed records it dropped in a rebalance. Here that is forced: with
    the worker stopped, three routed records are written and the group's offset is moved past the
    first two. The restarted counter must notice the gap and count those records too."""
    d = deployments(GAP_POLICY, partitions=2)
    t0 = ms("2022-03-01T10:00")
    worker = d.start_worker(data_dir=None, label="first")
    d.send_events([event(f"before-{i}", t0 + i * 1000, "acme-1", records=1) for i in range(5)])
    d.wait_consumed(timeout=120)
    wait_until(lambda: d.metric(worker, "meter_events_total") >= 5, 60, what="5 events counted")
    worker.stop()

    # Routed records in the router's wire format (events as [id, time ms, app_id, org_id,
    # endpoint, records, status, recipient, user_id]), keyed like the router keys them.
    def routed(*ids: str) -> bytes:
        rows = [[i, t0 + 60_000, "acme-1", None, "/x", 10, 200, None, None] for i in ids]
        return dumps({"e": rows, "i": int(time.time() * 1000)})

    placed = d.send_routed(
        [routed("gap-1", "gap-2"), routed("gap-3"), routed("after-1")], b"org:acme"
    )
    partition = placed[0][0]
    offsets = [offset for _, offset in placed]
    assert offsets == list(range(offsets[0], offsets[0] + 3))
    d.commit_counter_offset(partition, offsets[2])  # as if faust had consumed the first two

    second = d.start_worker(data_dir=worker.data_dir, label="second")
    d.push(ms("2022-03-01T12:00"), ["acme-1"])
    finals = {
        (w["subject"], w["window"]["size"]): w
        for w in values_of(d.windows(expect=4, timeout=120))
        if w["window"]["start"] == "2022-03-01T10:00:00Z"
    }
    assert finals[("acme-1", "15m")]["calls"] == 5 + 4
    assert finals[("acme", "1h")]["records"] == 5 + 4 * 10
    assert d.metric(second, "meter_skipped_records_recovered_total") == 2
    d.stop_all()

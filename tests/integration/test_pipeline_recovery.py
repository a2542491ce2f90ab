"""End to end: exactness under failure. A worker is SIGKILLed twice while a stream is being
produced and processed, and restarted (with its data dir, or a new one so the state must come back
from the changelog topic); two workers share the partitions while one stops and another joins.
Afterwards every window's final totals must be exact and every alert published exactly once."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.recovery_case import (
    POLICY,
    alerts_reach,
    finish_and_check,
    start_stream,
    stream,
)
from tests.integration.worker_proc import Deployment, deployment_factory, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
def deployments(
    kafka_bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> Iterator[Callable[..., Deployment]]:
    with deployment_factory(kafka_bootstrap, tmp_path, unique) as make:
        yield make


@pytest.mark.parametrize("data_dir", ["same-data-dir", "new-data-dir"])
def test_sigkill_mid_stream_and_restart_counts_exactly_once(
    deployments: Callable[..., Deployment], data_dir: str
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    d = deployments(POLICY, partitions=4)
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
    wait_until(alerts_reach(d, 110), 120, interval=0.3, what="110 alerts", abort=d.died)
    d.start_worker(label="c")  # a new member with an empty data dir takes some back
    producer.finish()
    finish_and_check(d, sent)
    assert len(d.running()) == 2
    d.stop_all()

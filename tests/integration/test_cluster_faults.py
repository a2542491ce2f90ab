"""End to end, on a 3-broker KRaft cluster of the test's own (`meter.adapters.broker_cluster`,
what `meter kafka start --brokers 3` runs): replication 3 and `min.insync.replicas` 2 for every
topic, meter's and the test's. Mid-stream, the broker leading most of the routed and changelog
partitions is SIGKILLed and later restarted; then the group coordinator's broker (the leader of
`__consumer_offsets`) is SIGKILLed and restarted. Two workers, the store and the API run through
it all and none exits; afterwards every window total is exact, every alert is published once by
id and stored once, and the processes logged a few lines, not thousands.

Recovery times are printed for the report (RELIABILITY.md), never asserted."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from meter.adapters.broker import BrokerLayout
from meter.adapters.broker_cluster import ClusterNode, LocalCluster
from tests.harness.deployment import Deployment, deployment_factory
from tests.harness.faults import (
    UnderLoad,
    free_port_block,
    kill_broker,
    measure_recovery,
    restart_broker,
)
from tests.harness.recovery import POLICY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
MAX_NOISY_LINES = 40
"""WARNING and ERROR lines a process may log in the whole test (two broker losses)."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three brokers for this module alone (node i on base + 2(i-1), its controller one up)."""
    base = free_port_block(6)
    state = tmp_path_factory.mktemp("cluster")
    layout = BrokerLayout(
        home=REPO / "deploy" / "kafka", state=state / "first", port=base, controller_port=base + 1
    )
    c = LocalCluster(layout, brokers=3, state=state)
    c.start(timeout=240)
    try:
        c.wait_for_brokers(timeout=120)
        yield c
    finally:
        c.stop()


@pytest.fixture
def deployments_on_cluster(
    cluster: LocalCluster, tmp_path: Path, unique: Callable[[str], str]
) -> Iterator[Callable[..., Deployment]]:
    with deployment_factory(cluster.bootstrap, tmp_path, unique) as make:
        yield make


def leaders(bootstrap: str, topics: list[str]) -> Counter[int]:
    """How many partitions of `topics` each broker leads."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="meter-tests")
    try:
        described = admin.describe_topics(topics)
    finally:
        admin.close()
    parts = [p for t in described for p in t["partitions"]]
    return Counter(p["leader_id"] for p in parts if p["leader_id"] >= 0)


def replication_of(bootstrap: str, topics: list[str]) -> dict[str, set[int]]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="meter-tests")
    try:
        described = admin.describe_topics(topics)
    finally:
        admin.close()
    return {t["name"]: {len(p["replica_nodes"]) for p in t["partitions"]} for t in described}


def survivors(cluster: LocalCluster, down: ClusterNode) -> str:
    return ",".join(n.layout.bootstrap for n in cluster.nodes if n is not down)


def test_a_broker_of_three_killed_twice_under_load(
    cluster: LocalCluster, deployments_on_cluster: Callable[..., Deployment], tmp_path: Path
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    d = deployments_on_cluster(POLICY, partitions=4, extra=["--session-timeout", "10s"])
    run = UnderLoad.start(d, str(tmp_path / "store.db"), random.Random(seed), n=40_000)
    producer, report = run.producer, run.report
    # Every topic, meter's own included, has three replicas.
    topics = [d.input_topic, d.routed_topic, d.changelog_topic, d.alerts_topic, d.windows_topic]
    assert replication_of(d.bootstrap, topics) == {t: {3} for t in topics}

    # 1. SIGKILL the broker that leads most of the routed and changelog partitions.
    led = leaders(d.bootstrap, [d.routed_topic, d.changelog_topic])
    victim = cluster.node(led.most_common(1)[0][0])
    killed_at = producer.sent
    kill_broker(victim)
    d.bootstrap = survivors(cluster, victim)  # the test's own clients skip the dead node
    first = measure_recovery(d, f"node {victim.node_id} SIGKILL")
    report.append(
        f"node {victim.node_id} (leader of {led[victim.node_id]} of "
        f"{sum(led.values())} routed and changelog partitions) SIGKILLed at record "
        f"{killed_at}: routing resumed {first.resumed_s}s and caught up {first.caught_up_s}s "
        f"after the kill"
    )
    restart_s = restart_broker(victim)
    cluster.wait_for_brokers(timeout=120)
    d.bootstrap = cluster.bootstrap
    report.append(f"node {victim.node_id} restarted: back after {restart_s:.1f}s")

    # 2. SIGKILL the group coordinator's broker (every group's offsets live on one partition).
    coordinator = cluster.node(leaders(d.bootstrap, ["__consumer_offsets"]).most_common(1)[0][0])
    killed_at = producer.sent
    kill_broker(coordinator)
    d.bootstrap = survivors(cluster, coordinator)
    second = measure_recovery(d, f"coordinator node {coordinator.node_id} SIGKILL")
    report.append(
        f"coordinator node {coordinator.node_id} SIGKILLed at record {killed_at} "
        f"(of {len(producer.values)}): routing resumed {second.resumed_s}s and caught up "
        f"{second.caught_up_s}s after the kill"
    )
    restart_broker(coordinator)
    cluster.wait_for_brokers(timeout=120)
    d.bootstrap = cluster.bootstrap

    run.finish([*run.workers, run.store, run.api], MAX_NOISY_LINES)

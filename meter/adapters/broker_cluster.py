"""`meter kafka start --brokers 3`: a KRaft cluster of local brokers on loopback, for running and
testing meter the way it is deployed (replication 3, `min.insync.replicas` 2).

Each node is a `LocalBroker` with a configuration of its own (`ClusterNode`): broker and
controller in one process, the controllers a static quorum of every node, all nodes formatted
with one cluster id. Node i listens on `port + 2(i-1)` and its controller on `controller_port +
2(i-1)` (defaults 9092/9093, 9094/9095, 9096/9097); its data, logs and pid file go in
`var/kafka-cluster/node-<i>/`. A node may also have an extra listener that advertises another
port (`ProxiedListener`): the fault tests put their proxy there.

With three nodes or more, topics get 3 replicas and a write needs 2 of them (`acks=all`):
losing one broker loses nothing and stops nothing; losing two stops writes until one is back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from meter.adapters.broker import BrokerError, BrokerLayout, LocalBroker, _cluster_id

log = logging.getLogger(__name__)

_NODE_PROPERTIES = """\
# Written by `meter kafka start --brokers {nodes}`; edits are overwritten on the next start.
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}{extra_listener}
advertised.listeners=PLAINTEXT://{host}:{port}{extra_advertised}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT{extra_protocol}
log.dirs={data_dir}
num.partitions=4
default.replication.factor={replication}
min.insync.replicas={min_isr}
unclean.leader.election.enable=false
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=1
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=16777216
auto.create.topics.enable=true
"""


@dataclass(frozen=True)
class ProxiedListener:
    """A second client listener on `port`, advertised as `advertised_port`: clients that
    bootstrap from the advertised port reach the broker through whatever listens there."""

    port: int
    advertised_port: int
    name: str = "PROXIED"


class ClusterNode(LocalBroker):
    """One broker (and controller) of a `LocalCluster`."""

    def __init__(
        self,
        cluster: LocalCluster,
        node_id: int,
        layout: BrokerLayout,
        extra: ProxiedListener | None = None,
    ) -> None:
        super().__init__(layout, java=cluster.java, mvn=cluster.mvn)
        self.cluster = cluster
        self.node_id = node_id
        self.extra = extra

    def _write_properties(self) -> None:
        lay, c, extra = self.layout, self.cluster, self.extra
        lay.state.mkdir(parents=True, exist_ok=True)
        lay.properties_file.write_text(
            _NODE_PROPERTIES.format(
                nodes=len(c.nodes),
                node_id=self.node_id,
                voters=c.voters,
                host=lay.host,
                port=lay.port,
                controller_port=lay.controller_port,
                extra_listener=f",{extra.name}://{lay.host}:{extra.port}" if extra else "",
                extra_advertised=(
                    f",{extra.name}://{lay.host}:{extra.advertised_port}" if extra else ""
                ),
                extra_protocol=f",{extra.name}:PLAINTEXT" if extra else "",
                data_dir=lay.data_dir,
                replication=c.replication,
                min_isr=c.min_insync_replicas,
            )
        )

    def _format_cluster_id(self) -> str:
        """Every node is formatted with the cluster's id (static voters: no `--standalone`)."""
        return self.cluster.cluster_id()

    def _name(self) -> str:
        return f"node {self.node_id}"


class LocalCluster:
    """`brokers` local KRaft nodes, started and stopped together; each can also be killed,
    paused and restarted on its own (`nodes`)."""

    def __init__(
        self,
        layout: BrokerLayout,
        brokers: int = 3,
        *,
        state: Path | None = None,
        extra: Mapping[int, ProxiedListener] | None = None,
        java: str = "java",
        mvn: str = "mvn",
    ) -> None:
        """`layout`: the first node's ports and the Maven project; `state`: where the nodes'
        directories go (default: `var/kafka-cluster` next to the layout's own state dir);
        `extra`: node id -> a proxied listener for that node."""
        if brokers < 1:
            raise BrokerError("a cluster needs at least one broker")
        self.java = java
        self.mvn = mvn
        self.state = state or layout.state.parent / "kafka-cluster"
        extra = extra or {}
        self.nodes: list[ClusterNode] = []
        for i in range(1, brokers + 1):
            node_layout = replace(
                layout,
                state=self.state / f"node-{i}",
                port=layout.port + 2 * (i - 1),
                controller_port=layout.controller_port + 2 * (i - 1),
            )
            self.nodes.append(ClusterNode(self, i, node_layout, extra.get(i)))

    # -- layout --------------------------------------------------------------------------------
    @property
    def replication(self) -> int:
        return min(3, len(self.nodes))

    @property
    def min_insync_replicas(self) -> int:
        return 2 if len(self.nodes) >= 3 else 1

    @property
    def voters(self) -> str:
        return ",".join(
            f"{n.node_id}@{n.layout.host}:{n.layout.controller_port}" for n in self.nodes
        )

    @property
    def bootstrap(self) -> str:
        return ",".join(n.layout.bootstrap for n in self.nodes)

    def node(self, node_id: int) -> ClusterNode:
        return self.nodes[node_id - 1]

    def cluster_id(self) -> str:
        """The id every node is formatted with, kept in the cluster's state dir."""
        path = self.state / "cluster.id"
        if path.is_file():
            return path.read_text().strip()
        self.state.mkdir(parents=True, exist_ok=True)
        cid = _cluster_id()
        path.write_text(f"{cid}\n")
        return cid

    # -- lifecycle -----------------------------------------------------------------------------
    def running(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.running()]

    def start(self, timeout: float = 120.0) -> bool:
        """Start every node that is not running, all at once (a node opens its client port only
        once a quorum of controllers is up), and wait until each accepts connections. Returns
        False when all were running already."""
        down = [n for n in self.nodes if not n.running()]
        if not down:
            return False
        if not down[0].jars_present():
            down[0].fetch()
        self.cluster_id()
        self._each(down, lambda n: n.start(timeout=timeout))
        return True

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop every node (SIGTERM, all at once: a node's controlled shutdown needs the others'
        controllers). False when none was running."""
        up = self.running()
        self._each(up, lambda n: n.stop(timeout=timeout))
        return bool(up)

    @staticmethod
    def _each(nodes: Sequence[ClusterNode], action: Callable[[ClusterNode], object]) -> None:
        errors: list[BaseException] = []

        def run(node: ClusterNode) -> None:
            try:
                action(node)
            except BaseException as exc:  # reported below, once every node is done
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def wait_for_brokers(
        self, bootstrap: str | None = None, count: int | None = None, timeout: float = 120.0
    ) -> None:
        """Wait until the cluster's metadata lists `count` brokers (default: every node):
        a node accepts connections before it has registered with the controllers."""
        from kafka import KafkaAdminClient  # noqa: PLC0415 - only for clusters
        from kafka.errors import KafkaError  # noqa: PLC0415

        want = count or len(self.nodes)
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            with contextlib.suppress(KafkaError, OSError):
                admin = KafkaAdminClient(bootstrap_servers=bootstrap or self.bootstrap)
                try:
                    seen = len(admin.describe_cluster().get("brokers", ()))
                finally:
                    admin.close()
                if seen >= want:
                    return
            time.sleep(0.5)
        raise BrokerError(f"only {seen} of {want} brokers registered within {timeout:.0f}s")


__all__ = ["ClusterNode", "LocalCluster", "ProxiedListener"]

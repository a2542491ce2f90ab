"""End to end, with the network between meter and Kafka broken in the ways networks break. A
broker of the test's own has a second listener that advertises the port of an asyncio fault proxy
(`tests.harness.faultproxy`); the workers, the store and the API bootstrap through the proxy, so
every connection they open goes through it, while the test's producer and checks connect
directly. Mid-stream the proxy adds latency, resets every connection (three times, mid-request or
not), blackholes everything for longer than the session timeout (connections stay open, nothing
arrives: requests time out, the group expels every member), and refuses new connections. Nobody
exits; afterwards every window total is exact and every alert is published once by id and stored
once.

Recovery times are printed for the report (RELIABILITY.md), never asserted."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meter.adapters.broker import BrokerLayout
from meter.adapters.broker_cluster import LocalCluster, ProxiedListener
from tests.harness.deployment import Deployment, deployment_factory
from tests.harness.faultproxy import FaultProxy, running_proxy
from tests.harness.faults import UnderLoad, free_port_block, measure_recovery
from tests.harness.recovery import POLICY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
SESSION = "6s"
"""The workers' session timeout: the blackhole outlasts it."""
LATENCY_MS = 250
LATENCY_S = 15.0
BLACKHOLE_S = 15.0
REFUSE_S = 10.0
MAX_NOISY_LINES = 40
"""WARNING and ERROR lines a process may log in the whole test (four faults, rebalances)."""


@pytest.fixture(scope="module")
def proxied_broker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalCluster, FaultProxy]]:
    """One broker whose second listener (base + 2) is reached through a fault proxy (base + 3)."""
    base = free_port_block(4)
    state = tmp_path_factory.mktemp("proxied")
    layout = BrokerLayout(
        home=REPO / "deploy" / "kafka", state=state / "first", port=base, controller_port=base + 1
    )
    listener = ProxiedListener(port=base + 2, advertised_port=base + 3)
    broker = LocalCluster(layout, brokers=1, state=state, extra={1: listener})
    broker.start(timeout=240)
    try:
        with running_proxy(("127.0.0.1", listener.port), listener.advertised_port) as proxy:
            yield broker, proxy
    finally:
        broker.stop()


@pytest.fixture
def deployments_behind_proxy(
    proxied_broker: tuple[LocalCluster, FaultProxy], tmp_path: Path, unique: Callable[[str], str]
) -> Iterator[Callable[..., Deployment]]:
    broker, proxy = proxied_broker
    with deployment_factory(broker.bootstrap, tmp_path, unique) as make:
        yield lambda policy, **kw: make(policy, worker_bootstrap=f"127.0.0.1:{proxy.port}", **kw)


def test_latency_cuts_blackhole_and_refusal_between_meter_and_kafka(
    proxied_broker: tuple[LocalCluster, FaultProxy],
    deployments_behind_proxy: Callable[..., Deployment],
    tmp_path: Path,
) -> None:
    _, proxy = proxied_broker
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    d = deployments_behind_proxy(POLICY, partitions=4, extra=["--session-timeout", SESSION])
    run = UnderLoad.start(d, str(tmp_path / "store.db"), random.Random(seed), n=40_000)
    producer, report = run.producer, run.report

    # 1. Latency: every chunk held LATENCY_MS each way.
    at = producer.sent
    proxy.set_latency(LATENCY_MS)
    time.sleep(LATENCY_S)
    proxy.heal()
    r = measure_recovery(d, "latency")
    report.append(f"{LATENCY_MS} ms each way for {LATENCY_S:.0f}s from record {at}: "
                  f"caught up {r.caught_up_s}s after it ended")  # fmt: skip

    # 2. Every connection reset, three times, two seconds apart.
    at = producer.sent
    cut = [proxy.cut()]
    for _ in range(2):
        time.sleep(2)
        cut.append(proxy.cut())
    r = measure_recovery(d, "cuts")
    report.append(f"connections reset at record {at} ({'+'.join(map(str, cut))} connections): "
                  f"routing resumed {r.resumed_s}s, caught up {r.caught_up_s}s after")  # fmt: skip

    # 3. Blackhole longer than the session timeout: nothing arrives either way.
    at = producer.sent
    proxy.blackhole(True)
    time.sleep(BLACKHOLE_S)
    proxy.heal()
    r = measure_recovery(d, "blackhole")
    report.append(f"blackhole {BLACKHOLE_S:.0f}s (session {SESSION}) at record {at}: "
                  f"routing resumed {r.resumed_s}s, caught up {r.caught_up_s}s after")  # fmt: skip

    # 4. New connections refused, open ones reset: Kafka is gone as far as meter can tell.
    at = producer.sent
    proxy.refuse(True)
    proxy.cut()
    time.sleep(REFUSE_S)
    proxy.heal()
    r = measure_recovery(d, "refused")
    report.append(f"connections refused {REFUSE_S:.0f}s at record {at}: "
                  f"routing resumed {r.resumed_s}s, caught up {r.caught_up_s}s after")  # fmt: skip
    report.append(f"proxy: {proxy.connections} connections, {proxy.cuts} reset")
    run.finish([*run.workers, run.store, run.api], MAX_NOISY_LINES)

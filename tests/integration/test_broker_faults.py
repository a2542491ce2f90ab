"""End to end, against a broker of the test's own: the broker is SIGKILLed mid-stream and
restarted (a worker is SIGKILLed meanwhile and a new one starts while the broker is down), then
paused (SIGSTOP) for longer than the clients' session timeout. Two workers, the store and the API
run through it all and none exits; afterwards every window total is exact, every alert is
published once by id and stored once, and each process logged a few lines per outage, not
thousands. (The 3-broker and network scenarios have their building blocks,
`meter.adapters.broker_cluster` and `tests.harness.faultproxy`, but no test yet.)

Recovery times are printed for the report (RELIABILITY.md), never asserted."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meter.adapters.broker import BrokerLayout, LocalBroker, free_port
from tests.harness.deployment import Deployment, deployment_factory
from tests.harness.faults import (
    UnderLoad,
    kill_broker,
    measure_recovery,
    pause_broker,
    restart_broker,
    resume_broker,
    wait_ready,
)
from tests.harness.recovery import POLICY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SESSION = "6s"
"""The workers' session timeout: the pause outlasts it, so every member is expelled."""
PAUSE_S = 15.0
MAX_NOISY_LINES = 40
"""WARNING and ERROR lines a process may log in the whole test (two outages, rebalances)."""


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A broker for this module alone: it is killed and paused (never the session's)."""
    layout = BrokerLayout(
        home=REPO / "deploy" / "kafka",
        state=tmp_path_factory.mktemp("fault-kafka"),
        port=free_port(),
        controller_port=free_port(),
    )
    broker = LocalBroker(layout)
    broker.start(timeout=180)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def deployments_on_own_broker(
    own_broker: LocalBroker, tmp_path: Path, unique: Callable[[str], str]
) -> Iterator[Callable[..., Deployment]]:
    with deployment_factory(own_broker.layout.bootstrap, tmp_path, unique) as make:
        yield make


def test_broker_killed_paused_and_a_worker_started_while_it_is_down(
    own_broker: LocalBroker, deployments_on_own_broker: Callable[..., Deployment], tmp_path: Path
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    d = deployments_on_own_broker(
        POLICY, partitions=4, extra=["--session-timeout", SESSION, "--connect-timeout", "5m"]
    )
    run = UnderLoad.start(d, str(tmp_path / "store.db"), random.Random(seed), n=20_000)
    producer, report = run.producer, run.report
    a, b = run.workers

    # 1. SIGKILL the broker mid-stream; while it is down, a worker dies and another starts.
    kill_broker(own_broker)
    killed_at = producer.sent
    a.kill()
    c = d.start_worker(label="c")
    time.sleep(5)
    restart_s = restart_broker(own_broker)
    first = measure_recovery(d, "broker SIGKILL, restart")
    report.append(
        f"SIGKILL at record {killed_at}: broker back after {restart_s:.1f}s, routing resumed "
        f"{first.resumed_s}s and caught up {first.caught_up_s}s later"
    )
    wait_ready(c)

    # 2. SIGSTOP the broker for longer than the session timeout, then SIGCONT.
    paused_at = producer.sent
    pid = pause_broker(own_broker)
    time.sleep(PAUSE_S)
    resume_broker(pid)
    second = measure_recovery(d, f"broker SIGSTOP {PAUSE_S:.0f}s")
    report.append(
        f"SIGSTOP {PAUSE_S:.0f}s at record {paused_at}: routing resumed "
        f"{second.resumed_s}s and caught up {second.caught_up_s}s after SIGCONT"
    )

    # Nobody exited: the workers b and c, the store and the API survived both outages, each
    # with a few lines per outage, not thousands (the clients' lines are counted, not shown).
    run.finish([b, c, run.store, run.api], MAX_NOISY_LINES)
    assert "unreachable since" in b.log_text()
    assert "answers again after" in b.log_text()

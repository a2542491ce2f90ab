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
    SteadyProducer,
    diagnose,
    kill_broker,
    log_levels,
    measure_recovery,
    noisy_lines,
    pause_broker,
    readyz,
    restart_broker,
    resume_broker,
    stored_alert_ids,
    wait_ready,
)
from tests.harness.oracle import expected_cap_alerts
from tests.harness.processes import wait_until
from tests.harness.recovery import ORG_OF, POLICY, alerts_reach, caps_of, finish_and_check, stream

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
    rng = random.Random(seed)
    d = deployments_on_own_broker(
        POLICY, partitions=4, extra=["--session-timeout", SESSION, "--connect-timeout", "5m"]
    )
    database = str(tmp_path / "store.db")
    a, b = d.start_worker(label="a"), d.start_worker(label="b")
    store, api = d.start_store(database), d.start_api(database)
    for process in (a, b, api):
        wait_ready(process)
    batches = stream(rng, n=20_000, retries=0.05)
    sent = [ev for batch in batches for ev in batch]
    producer = SteadyProducer(d.bootstrap, d.input_topic, batches, pause=0.08)
    producer.start()
    report = []

    # 1. SIGKILL the broker mid-stream; while it is down, a worker dies and another starts.
    wait_until(alerts_reach(d, 20), 120, interval=0.3, what="20 alerts", abort=d.died)
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

    producer.finish()
    try:
        finish_and_check(d, sent)
    except AssertionError:
        diagnose(d)
        raise

    # Nobody exited: the workers b and c, the store and the API survived both outages.
    assert not d.died(), d.logs()
    assert {w.log_path.name for w in d.running()} >= {p.log_path.name for p in (b, c, store, api)}
    status, body = readyz(api)
    assert status == 200, body
    # The store holds every alert once.
    expected = set(expected_cap_alerts(sent, caps_of, ORG_OF))
    wait_until(lambda: stored_alert_ids(database) == expected, 120, interval=1,
               what="the store to hold every alert", abort=d.died)  # fmt: skip
    # A few lines per outage, not thousands: the clients' error lines are counted, not shown.
    for process in (b, store, api):
        levels = log_levels(process)
        report.append(f"{process.log_path.name}: {levels['lines']} lines, "
                      f"{noisy_lines(process)} WARNING/ERROR")  # fmt: skip
        assert noisy_lines(process) <= MAX_NOISY_LINES, process.log_tail(20_000)
    assert "unreachable since" in b.log_text()
    assert "answers again after" in b.log_text()
    print("\n".join(report))
    d.stop_all()

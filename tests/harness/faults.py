"""What the fault tests use: brokers to break (SIGKILL, SIGSTOP, restart), a producer that keeps
every event through an outage, recovery clocks, log line counts and readiness checks.

Durations are measured for the report only: no test asserts on them.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from meter.adapters.broker import LocalBroker
from tests.harness.data import Event, dumps
from tests.harness.deployment import Deployment
from tests.harness.oracle import expected_cap_alerts
from tests.harness.processes import WorkerProcess, wait_until
from tests.harness.recovery import ORG_OF, alerts_reach, caps_of, finish_and_check, stream


# -- brokers -----------------------------------------------------------------------------------
def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive TCP ports free on `host` right now (a local cluster's
    nodes take consecutive ports)."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(20_000, 60_000)
        if all(_bindable(host, base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports on {host}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def kill_broker(broker: LocalBroker) -> None:
    """SIGKILL: a crash; nothing is flushed (the page cache survives: a process crash only)."""
    pid = broker.pid()
    assert pid is not None, "the broker is not running"
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    wait_until(lambda: not broker.running(), 30, what="the killed broker to be gone")


def pause_broker(broker: LocalBroker) -> int:
    """SIGSTOP (kafkatest's ProcessStopFaultSpec): connections stay open, nothing answers."""
    pid = broker.pid()
    assert pid is not None, "the broker is not running"
    os.kill(pid, signal.SIGSTOP)
    return pid


def resume_broker(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


def restart_broker(broker: LocalBroker, timeout: float = 180.0) -> float:
    """Start a stopped or killed broker on its own data; seconds until it accepts connections."""
    started = time.monotonic()
    broker.start(timeout=timeout)
    return time.monotonic() - started


# -- input -------------------------------------------------------------------------------------
class SteadyProducer(threading.Thread):
    """Produces one record per batch of events at a steady pace, and keeps every one through an
    outage: sends block while Kafka is away (`max_block_ms`), are retried for up to 10 minutes
    (`delivery_timeout_ms`), and a send that still fails is sent again. A record sent twice is
    a gateway retry: the meter counts its events once. `acked` counts acknowledged records."""

    def __init__(
        self, bootstrap: str, topic: str, batches: Sequence[list[Event]], pause: float
    ) -> None:
        super().__init__(daemon=True, name="steady-producer")
        self.bootstrap, self.topic, self.pause = bootstrap, topic, pause
        self.values = [dumps(b) for b in batches]
        self.sent = 0
        self.acked = 0
        self.resent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = KafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                linger_ms=5,
                max_block_ms=600_000,
                delivery_timeout_ms=600_000,
                request_timeout_ms=30_000,
            )
            try:
                pending = list(enumerate(self.values))
                while pending:
                    futures = []
                    for i, value in pending:
                        futures.append((i, producer.send(self.topic, value=value, key=b"k%d" % i)))
                        self.sent += 1
                        time.sleep(self.pause)
                    producer.flush(timeout=600)
                    failed = []
                    for i, fut in futures:
                        try:
                            fut.get(timeout=600)
                            self.acked += 1
                        except KafkaError:
                            failed.append((i, self.values[i]))
                    self.resent += len(failed)
                    pending = failed
            finally:
                producer.close()
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, timeout: float = 900.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the producer did not finish"
        assert self.error is None, f"the producer failed: {self.error!r}"
        assert self.acked == len(self.values), (self.acked, len(self.values))


# -- recovery ----------------------------------------------------------------------------------
def _committed_total(admin: KafkaAdminClient, group: str, topic: str) -> int:
    offsets = admin.list_group_offsets({group: None}).get(group, {})
    return sum(o.offset for tp, o in offsets.items() if tp.topic == topic and o.offset >= 0)


def _end_total(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(parts).values())
    finally:
        consumer.close()


@dataclass
class Recovery:
    """After a fault ends: when the routers committed input again (`resumed_s`), and when they
    had routed everything produced before the fault ended (`caught_up_s`); seconds from the
    fault's end, None if not within the timeout."""

    fault: str
    resumed_s: float | None = None
    caught_up_s: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def measure_recovery(d: Deployment, fault: str, timeout: float = 240.0) -> Recovery:
    """Call when a fault has just ended; returns once the routers caught up (or timed out)."""
    ended = time.monotonic()
    group, topic = f"{d.group}-router", d.input_topic
    out = Recovery(fault)
    before = target = None
    while time.monotonic() - ended < timeout:
        try:
            admin = KafkaAdminClient(bootstrap_servers=d.bootstrap, client_id="meter-tests")
            try:
                if target is None:
                    target = _end_total(d.bootstrap, topic)
                    before = _committed_total(admin, group, topic)
                done = _committed_total(admin, group, topic)
            finally:
                admin.close()
        except (KafkaError, OSError):
            time.sleep(0.5)
            continue
        now = time.monotonic() - ended
        if out.resumed_s is None and before is not None and done > before:
            out.resumed_s = now
        if done >= target:
            out.caught_up_s = now
            out.resumed_s = out.resumed_s if out.resumed_s is not None else now
            return out
        time.sleep(0.5)
    return out


# -- processes ---------------------------------------------------------------------------------
_LEVEL = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ")


def log_levels(process: WorkerProcess) -> Counter[str]:
    """WARNING, ERROR and CRITICAL lines in a process's log, and all lines (`lines`)."""
    counts: Counter[str] = Counter()
    for line in process.log_text().splitlines():
        counts["lines"] += 1
        found = _LEVEL.match(line)
        if found:
            counts[found.group(1)] += 1
    return counts


def noisy_lines(process: WorkerProcess) -> int:
    counts = log_levels(process)
    return counts["WARNING"] + counts["ERROR"] + counts["CRITICAL"]


def wait_ready(process: WorkerProcess, timeout: float = 120.0) -> None:
    """Until the process's `/readyz` answers 200."""
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    def ready() -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{process.web_port}/readyz", timeout=5
            ) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    wait_until(ready, timeout, interval=0.5, what=f"{process.log_path.name} to be ready",
               abort=lambda: not process.alive())  # fmt: skip


def readyz(process: WorkerProcess) -> tuple[int, dict[str, Any]]:
    import json  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{process.web_port}/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def stored_alert_ids(database: str) -> set[str]:
    """The alert ids the store (`meter store`, SQLite) holds."""
    with sqlite3.connect(database) as db:
        return {row[0] for row in db.execute("SELECT id FROM alert")}


def diagnose(d: Deployment) -> None:
    """When a fault test fails: print each process's readiness, and make each worker log every
    thread's and task's stack (mode does on SIGUSR1; the logs are printed at the end)."""
    for process in d.running():
        if process.web_port:
            with contextlib.suppress(OSError, ValueError):
                print(f"{process.log_path.name} /readyz: {readyz(process)}")
        if process.args[0] == "worker":  # only faust's workers handle it
            os.kill(process.pid, signal.SIGUSR1)
    time.sleep(3)


# -- a scenario ----------------------------------------------------------------------------------
@dataclass
class UnderLoad:
    """Two workers, the store and the API on one deployment, with a steady producer streaming
    `stream(n)` (5% gateway retries): what every fault test runs its faults against."""

    d: Deployment
    database: str
    workers: list[WorkerProcess]
    store: WorkerProcess
    api: WorkerProcess
    sent: list[Event]
    producer: SteadyProducer
    report: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, d: Deployment, database: str, rng: random.Random, n: int) -> UnderLoad:
        workers = [d.start_worker(label="a"), d.start_worker(label="b")]
        store, api = d.start_store(database), d.start_api(database)
        for process in (*workers, api):
            wait_ready(process)
        batches = stream(rng, n=n, retries=0.05)
        sent = [ev for batch in batches for ev in batch]
        producer = SteadyProducer(d.bootstrap, d.input_topic, batches, pause=0.08)
        producer.start()
        wait_until(alerts_reach(d, 20), 120, interval=0.3, what="20 alerts", abort=d.died)
        return cls(d, database, workers, store, api, sent, producer)

    def finish(self, survivors: Sequence[WorkerProcess], max_noisy_lines: int) -> None:
        """Once the faults are over: the stream ends; every total and alert is exact (on failure,
        `diagnose`), nobody exited, the API is ready, the store holds every alert once, and each
        of `survivors` logged at most `max_noisy_lines` WARNING or ERROR lines. Prints the
        report."""
        d = self.d
        self.producer.finish()
        try:
            finish_and_check(d, self.sent)
        except AssertionError:
            diagnose(d)
            raise
        assert not d.died(), d.logs()
        status, body = readyz(self.api)
        assert status == 200, body
        expected = set(expected_cap_alerts(self.sent, caps_of, ORG_OF))
        wait_until(lambda: stored_alert_ids(self.database) == expected, 120, interval=1,
                   what="the store to hold every alert", abort=d.died)  # fmt: skip
        for process in survivors:
            counts = log_levels(process)
            self.report.append(f"{process.log_path.name}: {counts['lines']} lines, "
                               f"{noisy_lines(process)} WARNING/ERROR")  # fmt: skip
            assert noisy_lines(process) <= max_noisy_lines, process.log_tail(20_000)
        print("\n".join(self.report))
        d.stop_all()

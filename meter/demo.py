"""`meter demo`: the 2022 case end to end on this machine, checked against the ground truth.

Starts the local broker unless one is configured, a worker with the bundled demo policy, replays
a year of the eight-app organisation's traffic compressed into a couple of minutes, prints each
alert as it fires, and ends with a comparison of the meter's outputs with the simulator's truth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer

from meter.adapters.broker import BrokerLayout, LocalBroker, port_open
from meter.adapters.topics import TopicSpec, ensure_topics
from meter.config import WEB_PORT, Option, add_arguments, default_state_dir, load, positive_int
from meter.core.durations import MINUTE_MS
from meter.core.errors import MeterError
from meter.sim.compare import compare
from meter.sim.truth import Truth, load_truth

DEMO_POLICY = Path(__file__).resolve().parent / "examples" / "demo-2022.yaml"
GRACE = "60s"
GRACE_MS = MINUTE_MS
IDLE_TIMEOUT = "10s"
"""Once the replay has been sent, the input partitions go idle after this and every window
closes; the simulator never pauses that long while it sends."""
INPUT_PARTITIONS = 4


def out(line: str) -> None:
    """Demo output: one line, clearing a progress bar the simulator may have drawn."""
    sys.stdout.write(f"\r\x1b[K{line}\n" if sys.stdout.isatty() else f"{line}\n")
    sys.stdout.flush()


def describe_alert(a: Mapping[str, Any]) -> str:
    """One readable line per alert."""
    when = str(a.get("crossed_at", ""))[:16].replace("T", " ")
    who = f"{a['subject_type']} {a['subject']}"
    sev = str(a.get("severity", "")).upper()
    late = " (late)" if a.get("late") else ""
    if a["kind"] == "cap":
        pct = round(float(a["threshold"]) * 100)
        window = a["window"]
        return (
            f"{when}  {sev:<8} {who} reached {pct}% of {a['cap']}: {a['used']:,}/{a['limit']:,} "
            f"{a['metric']} in {window['size']} from {window['start'][:16].replace('T', ' ')}{late}"
        )
    if a["kind"] == "restricted_use":
        return (
            f"{when}  {sev:<8} {who}: app {a.get('app_id')} sent data to a "
            f"{a.get('recipient')} recipient without a recorded notice{late}"
        )
    return f"{when}  {sev:<8} unknown app {a['subject']} is calling the API{late}"


class AlertTail(threading.Thread):
    """Reads the alerts topic while the demo runs, printing each alert once as it arrives."""

    def __init__(self, bootstrap: str, topic: str, started: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.started = started
        self.alerts: list[dict[str, Any]] = []
        self.first_alert_s: float | None = None
        """Seconds from the demo's start to the first alert on screen."""
        self.stopping = threading.Event()

    def run(self) -> None:
        consumer = KafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        try:
            while not self.stopping.is_set():
                for records in consumer.poll(timeout_ms=200).values():
                    for r in records:
                        alert = json.loads(r.value)
                        self.alerts.append(alert)
                        out(describe_alert(alert))
                        if self.first_alert_s is None:
                            self.first_alert_s = time.monotonic() - self.started
        finally:
            consumer.close()


def read_topic(bootstrap: str, topic: str, idle_s: float = 3.0) -> list[dict[str, Any]]:
    """Every JSON value on `topic`, read until nothing new arrives for `idle_s`."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    values: list[dict[str, Any]] = []
    quiet_since = time.monotonic()
    try:
        while time.monotonic() - quiet_since < idle_s:
            batch = consumer.poll(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                values.extend(json.loads(r.value) for r in records)
            if batch:
                quiet_since = time.monotonic()
    finally:
        consumer.close()
    return values


def metric(url: str, name: str) -> float | None:
    """The value of an unlabelled metric, None when the page or the metric is not there."""
    values = metric_values(url, name)
    return values[0] if values else None


def metric_values(url: str, name: str) -> list[float] | None:
    """Every series of metric `name` (labelled or not); None when the page cannot be read."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our own loopback URL
            text = resp.read().decode()
    except OSError:
        return None
    pattern = rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$"
    return [float(v) for v in re.findall(pattern, text, re.MULTILINE)]


def all_closed(url: str, until_s: float) -> bool:
    """Whether every partition's windows have closed up to `until_s` and every output is out."""
    watermarks = metric_values(url, "meter_watermark_seconds")
    pending = metric_values(url, "meter_outbox_pending_records")
    return bool(watermarks) and min(watermarks or [0]) >= until_s and not any(pending or [1])


@contextlib.contextmanager
def kafka_for_demo(env: Mapping[str, str]) -> Iterator[str]:
    """The configured Kafka, or the local broker (started here, and stopped at the end)."""
    configured = env.get("METER_KAFKA_BOOTSTRAP")
    if configured:
        yield configured
        return
    s = BrokerLayout.load({}, env)
    broker = LocalBroker(s)
    started = False
    if not port_open(s.host, s.port):
        out(f"starting the local Kafka broker on {s.host}:{s.port} ...")
        started = broker.start()
    try:
        yield f"{s.host}:{s.port}"
    finally:
        if started:
            broker.stop()
            out("local Kafka broker stopped")


def run_demo(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    options = load(DEMO_OPTIONS, vars(args), env)
    started = time.monotonic()
    with kafka_for_demo(env) as bootstrap:
        demo = Demo(bootstrap, env, options["calls"], options["web_port"])
        try:
            return demo.run(started)
        except KeyboardInterrupt:
            out("interrupted: stopping everything the demo started")
            return 130
        finally:
            demo.stop()


class Demo:
    """One run: its topics and state under `var/demo/<run>/`, the worker, the alert tail."""

    def __init__(self, bootstrap: str, env: Mapping[str, str], calls: int, web_port: int) -> None:
        run_id = time.strftime("%Y%m%d-%H%M%S")
        self.bootstrap = bootstrap
        self.calls = calls
        self.state = default_state_dir(env) / "demo" / run_id
        self.names = {k: f"demo-{run_id}-{k}" for k in ("api-calls", "alerts", "windows", "dlq")}
        self.metrics_url = f"http://127.0.0.1:{web_port}/metrics"
        self.env = dict(
            os.environ,
            METER_KAFKA_BOOTSTRAP=bootstrap,
            METER_POLICY=str(DEMO_POLICY),
            METER_INPUT_TOPIC=self.names["api-calls"],
            METER_ALERTS_TOPIC=self.names["alerts"],
            METER_WINDOWS_TOPIC=self.names["windows"],
            METER_DLQ_TOPIC=self.names["dlq"],
            METER_GROUP=f"meter-demo-{run_id}",
            METER_DATA_DIR=str(self.state / "worker"),
            METER_WEB_PORT=str(web_port),
            METER_GRACE=GRACE,
            METER_IDLE_TIMEOUT=IDLE_TIMEOUT,
        )
        self.worker: subprocess.Popen[bytes] | None = None
        self.tail: AlertTail | None = None

    def run(self, started: float) -> int:
        self._start_worker()
        self.tail = AlertTail(self.bootstrap, self.names["alerts"], started)
        self.tail.start()
        truth = self._replay()
        if truth is None:
            return 1
        out(f"all sent; waiting for the worker to count {truth.sent['calls']:,} calls ...")
        self._wait(lambda: self._metric("meter_events_total") >= truth.sent["calls"], 600)
        last_end = max(w.end_ms for w in truth.windows) + GRACE_MS
        out("counted; waiting for the input to go idle and every window to close ...")
        self._wait(lambda: all_closed(self.metrics_url, last_end / 1000), 300)
        windows = read_topic(self.bootstrap, self.names["windows"])
        time.sleep(2)  # the last alerts of the last batch
        self.tail.stopping.set()
        self.tail.join(timeout=10)
        result = compare(truth, windows, self.tail.alerts, grace_ms=GRACE_MS)
        out("")
        for line in self._summary(truth.sent, len(windows), len(self.tail.alerts)):
            out(line)
        out(result.summary())
        out("the meter agrees with the ground truth" if result.ok else "MISMATCH")
        return 0 if result.ok else 1

    def stop(self) -> None:
        """Stop what the demo started (the broker, if it started one, is stopped by the caller)."""
        if self.tail is not None:
            self.tail.stopping.set()
        worker = self.worker
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()

    def _start_worker(self) -> None:
        ensure_topics(self.bootstrap, [TopicSpec(self.names["api-calls"], INPUT_PARTITIONS)])
        self.state.mkdir(parents=True, exist_ok=True)
        log_path = self.state / "worker.log"
        with log_path.open("wb") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "meter.cli", "worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        out(f"worker started (log {log_path}); metrics at {self.metrics_url}")
        self._wait(lambda: metric(self.metrics_url, "meter_events_total") is not None, 120)

    def _replay(self) -> Truth | None:
        truth_path = self.state / "truth.json"
        out(f"replaying 2022 for the eight-app organisation: {self.calls:,} calls ...")
        sim = subprocess.run(
            [
                sys.executable, "-m", "meter.cli", "simulate",
                "--bootstrap", self.bootstrap, "--topic", self.names["api-calls"],
                "--policy", str(DEMO_POLICY), "--calls", str(self.calls), "--unknown", "0.0002",
                "--truth", str(truth_path), "--progress",
            ],
            env=self.env,
            check=False,
        )  # fmt: skip
        if sim.returncode != 0:
            out("the simulator failed")
            return None
        return load_truth(truth_path)

    def _metric(self, name: str) -> float:
        return sum(metric_values(self.metrics_url, name) or [0.0])

    def _wait(self, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            worker = self.worker
            if worker is not None and worker.poll() is not None:
                raise MeterError(f"the worker exited with status {worker.returncode}; see its log")
            if time.monotonic() > deadline:
                raise MeterError("timed out waiting for the worker")
            time.sleep(0.5)

    def _summary(self, sent: Mapping[str, Any], windows: int, alerts: int) -> list[str]:
        """What was sent and what the meter did with it; every number says what it counts."""
        repeats = int(self._metric("meter_duplicate_events_total"))
        late = int(self._metric("meter_late_events_total"))
        dead = int(self._metric("meter_dead_letter_events_total"))
        amendments = int(self._metric('meter_window_records_total{type="amendment"}'))
        retries = "every retry" if repeats == sent["duplicates"] else f"{sent['duplicates']:,} sent"
        first = self.tail.first_alert_s if self.tail is not None else None
        when = "" if first is None else f"; the first was on screen {first:.0f} s after the start"
        return [
            f"sent       {sent['events']:,} events: {sent['calls']:,} calls ({sent['flush']:,} of "
            f"them past the year's end, so that its last windows close) and "
            f"{sent['duplicates']:,} gateway retries of calls already sent, plus "
            f"{sent['malformed']:,} malformed records",
            f"counted    each call once: {repeats:,} repeats dropped ({retries}); "
            f"{late:,} {'call' if late == 1 else 'calls'} arrived after their window had closed "
            "and amended it",
            f"rejected   {dead:,} malformed records, dead-lettered with their reasons",
            f"published  {windows:,} window records ({amendments:,} of them amendments) and "
            f"{alerts:,} alerts{when}",
        ]


DEMO_OPTIONS: tuple[Option, ...] = (
    Option("--calls", 200_000, positive_int, "calls to replay", "`200000`",
           var="METER_DEMO_CALLS"),
    WEB_PORT,
)  # fmt: skip


def add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="replay the 2022 case on a local broker and check the meter against ground truth",
        description="Start a local broker (unless METER_KAFKA_BOOTSTRAP is set) and a worker, "
        "replay a year of the eight-app organisation's calls, print alerts as they fire, and "
        "compare the meter's totals and alerts with the simulator's ground truth. Ctrl-C stops "
        "everything it started.",
    )
    add_arguments(p, DEMO_OPTIONS)
    p.set_defaults(handler=run_demo)

"""`meter demo`: the 2022 case end to end on this machine, checked against the ground truth.

Starts the local broker unless one is configured, a worker with the bundled demo policy, the
usage store and the HTTP API; replays a year of the eight-app organisation's traffic compressed
into a couple of minutes, prints each alert as it fires, and ends with a comparison of the
meter's outputs, and of what the API answers from the store, with the simulator's truth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from meter.adapters.api.settings import PORT as API_PORT
from meter.adapters.broker import BrokerLayout, LocalBroker, port_open
from meter.adapters.report.demo_statement import write_demo_statement
from meter.adapters.topics import TopicSpec, ensure_topics
from meter.config import (
    WEB_PORT,
    KafkaSecurity,
    Option,
    add_arguments,
    default_state_dir,
    load,
    positive_int,
)
from meter.core.durations import MINUTE_MS
from meter.core.errors import MeterError
from meter.demo.api_check import check_api, expected_months
from meter.demo.watch import (
    AlertTail,
    all_closed,
    answers,
    metric,
    metric_values,
    out,
    read_topic,
)
from meter.sim.compare import compare
from meter.sim.truth import Truth, load_truth

STATEMENT_ORG = "microsoft"
"""Whose 2022 statement the demo ends with (the case's eight apps)."""
DEMO_POLICY = Path(__file__).resolve().parents[1] / "examples" / "demo-2022.yaml"
GRACE = "60s"
GRACE_MS = MINUTE_MS
IDLE_TIMEOUT = "10s"
"""Once the replay has been sent, the input partitions go idle after this and every window
closes; the simulator never pauses that long while it sends."""
INPUT_PARTITIONS = 4


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
        demo = Demo(bootstrap, env, options["calls"], options["web_port"], options["port"])
        try:
            return demo.run(started)
        except KeyboardInterrupt:
            out("interrupted: stopping everything the demo started")
            return 130
        finally:
            demo.stop()


class Demo:
    """One run: its topics and state under `var/demo/<run>/`, the worker, the usage store, the
    API, the alert tail."""

    def __init__(
        self, bootstrap: str, env: Mapping[str, str], calls: int, web_port: int, api_port: int
    ) -> None:
        run_id = time.strftime("%Y%m%d-%H%M%S")
        self.bootstrap = bootstrap
        self.security = KafkaSecurity.load(env)
        self.calls = calls
        self.state = default_state_dir(env) / "demo" / run_id
        kinds = ("api-calls", "alerts", "windows", "dlq", "quota")
        self.names = {k: f"meter-demo-{run_id}-{k}" for k in kinds}  # under ACLs for `meter-`
        self.metrics_url = f"http://127.0.0.1:{web_port}/metrics"
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.env = dict(
            os.environ,
            METER_KAFKA_BOOTSTRAP=bootstrap,
            METER_POLICY=str(DEMO_POLICY),
            METER_INPUT_TOPIC=self.names["api-calls"],
            METER_ALERTS_TOPIC=self.names["alerts"],
            METER_WINDOWS_TOPIC=self.names["windows"],
            METER_DLQ_TOPIC=self.names["dlq"],
            METER_QUOTA_TOPIC=self.names["quota"],
            METER_DATABASE=str(self.state / "meter.db"),
            METER_API_PORT=str(api_port),
            METER_GROUP=f"meter-demo-{run_id}",
            METER_DATA_DIR=str(self.state / "worker"),
            METER_WEB_PORT=str(web_port),
            METER_GRACE=GRACE,
            METER_IDLE_TIMEOUT=IDLE_TIMEOUT,
        )
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.tail: AlertTail | None = None

    def run(self, started: float) -> int:
        self._start_worker()
        self._start("store", "the usage store")
        self._start("api", "the HTTP API")
        self._wait(lambda: answers(f"{self.api_url}/readyz"), 120)
        out(f"API at {self.api_url}  (try {self.api_url}/v1/orgs/microsoft/usage)")
        self.tail = AlertTail(self.bootstrap, self.names["alerts"], started, self.security)
        self.tail.start()
        truth = self._replay()
        if truth is None:
            return 1
        out(f"all sent; waiting for the worker to count {truth.sent['calls']:,} calls ...")
        self._wait(lambda: self._metric("meter_events_total") >= truth.sent["calls"], 600)
        last_end = max(w.end_ms for w in truth.windows) + GRACE_MS
        out("counted; waiting for the input to go idle and every window to close ...")
        self._wait(lambda: all_closed(self.metrics_url, last_end / 1000), 300)
        windows = read_topic(self.bootstrap, self.names["windows"], self.security)
        self.tail.stopping.set()  # it reads on to the alerts' end offsets
        self.tail.join(timeout=120)
        if self.tail.is_alive():
            raise TimeoutError("the alerts topic could not be read to its end in 120 s")
        result = compare(truth, windows, self.tail.alerts, grace_ms=GRACE_MS)
        out("checking what the API answers from the usage store ...")
        api = check_api(self.api_url, truth, len(self.tail.alerts), timeout_s=120)
        out("")
        for line in self._summary(truth.sent, len(windows), len(self.tail.alerts)):
            out(line)
        out(
            f"API        2022 month by month for {api.subjects} apps and organisations "
            f"({api.rows} months with usage) and {api.alerts:,} alerts, from {self.api_url}: "
            + ("as the truth says" if api.ok else f"MISMATCH: {api.detail}")
        )
        statement_ok = True
        if api.ok:
            line, statement_ok = self._statement(truth)
            out(line)
        out(result.summary())
        ok = result.ok and api.ok and statement_ok
        out("the meter agrees with the ground truth" if ok else "MISMATCH")
        return 0 if ok else 1

    def _statement(self, truth: Truth) -> tuple[str, bool]:
        """The organisation's 2022 usage statement from the store, its totals against the
        truth's."""
        json_path, html_path, sid = write_demo_statement(
            str(self.state / "meter.db"), DEMO_POLICY, STATEMENT_ORG, self.state / "report"
        )
        doc = json.loads(json_path.read_text())
        got = (doc["totals"]["calls"], doc["totals"]["records"])
        months = expected_months(truth)
        want = tuple(
            sum(v[i] for (kind, subject, _), v in months.items()
                if kind == "org" and subject == STATEMENT_ORG)
            for i in (0, 1)
        )  # fmt: skip
        verdict = (
            "as the truth says" if got == want else f"MISMATCH: truth {want[0]:,} and {want[1]:,}"
        )
        return (
            f"statement  {STATEMENT_ORG}'s 2022: {got[0]:,} calls and {got[1]:,} records, "
            f"{verdict} ({doc['status']}; sha256 {sid[:12]}...)\n"
            f"           {html_path}\n"
            f"           check it: meter report verify {json_path}",
            got == want,
        )

    def stop(self) -> None:
        """Stop what the demo started (the broker, if it started one, is stopped by the caller)."""
        if self.tail is not None:
            self.tail.stopping.set()
        for proc in reversed(list(self.processes.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def _start(self, command: str, what: str) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        log_path = self.state / f"{command}.log"
        with log_path.open("wb") as log:
            self.processes[command] = subprocess.Popen(
                [sys.executable, "-m", "meter.cli", command],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        out(f"{what} started (log {log_path})")

    def _start_worker(self) -> None:
        ensure_topics(
            self.bootstrap, [TopicSpec(self.names["api-calls"], INPUT_PARTITIONS)],
            security=self.security,
        )  # fmt: skip
        self._start("worker", f"worker; metrics at {self.metrics_url}")
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
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise MeterError(
                        f"the {name} exited with status {proc.returncode}; see "
                        f"{self.state / (name + '.log')}"
                    )
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
            f"{late:,} "
            + (
                "call arrived after its window had closed and amended it"
                if late == 1
                else "calls arrived after their windows had closed and amended them"
            ),
            f"rejected   {dead:,} malformed records, dead-lettered with their reasons",
            f"published  {windows:,} window records ({amendments:,} of them amendments) and "
            f"{alerts:,} alerts{when}",
        ]


DEMO_OPTIONS: tuple[Option, ...] = (
    Option("--calls", 200_000, positive_int, "calls to replay", "`200000`",
           var="METER_DEMO_CALLS"),
    WEB_PORT,
    API_PORT,
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

"""Helpers for end-to-end tests of `meter worker`: worker subprocesses, a per-test deployment
(group, topics, policy, data dirs) and independent computations of what the meter must emit.

Nothing here imports meter's counting code: expected totals and ids are computed from what the test
sent, with the documented formulas, so a regression in the product shows up as a mismatch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import MemberToRemove
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from meter.adapters.topics import TopicSpec, ensure_topics
from tests.integration.kafka_io import produce, read_all

REPO = Path(__file__).resolve().parents[2]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

T = TypeVar("T")
Event = dict[str, Any]


# -- small utilities -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ms(text: str) -> int:
    """Epoch ms of an ISO date-time (UTC when no zone is given)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(milliseconds=1)


def iso(ms_: int) -> str:
    """The meter's RFC 3339 rendering: UTC, 'Z', milliseconds only when non-zero."""
    t = EPOCH + timedelta(milliseconds=ms_)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms_ % 1000:03d}Z" if ms_ % 1000 else f"{text}Z"


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.25,
    what: str = "condition",
    abort: Callable[[], bool] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy (returned); fail after `timeout` s or
    as soon as `abort()` is true (e.g. a worker died)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if abort is not None and abort():
            raise AssertionError(f"gave up waiting for {what}: aborted (a worker exited?)")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def header(record: ConsumerRecord, name: str) -> bytes | None:
    for key, value in record.headers or ():
        if key == name:
            return bytes(value) if value is not None else None
    return None


def stable_id(*parts: object) -> str:
    """The documented deterministic id: sha256 of the parts joined by U+001F, 32 hex digits."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]


def cap_alert_id(stype: str, subject: str, cap_key: str, window_start: int, ratio: float) -> str:
    return stable_id("cap", stype, subject, cap_key, window_start, float(ratio))


def window_record_id(stype: str, subject: str, size: str, start: int, revision: int) -> str:
    return stable_id("window", stype, subject, size, start, revision)


def marker_alert_id(
    kind: str, stype: str, subject: str, details: Sequence[tuple[str, str]], day_start: int
) -> str:
    return stable_id(kind, stype, subject, *sorted(details), day_start)


def event(
    eid: str,
    time_ms: int,
    app: str,
    *,
    records: int = 0,
    endpoint: str | None = None,
    status: int | None = None,
    org: str | None = None,
    recipient: str | None = None,
) -> Event:
    ev: Event = {"id": eid, "time": time_ms, "app_id": app, "records": records}
    if endpoint is not None:
        ev["endpoint"] = endpoint
    if status is not None:
        ev["status"] = status
    if org is not None:
        ev["org_id"] = org
    if recipient is not None:
        ev["recipient"] = recipient
    return ev


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# -- expected results ------------------------------------------------------------------------
@dataclass
class Totals:
    calls: int = 0
    records: int = 0
    endpoints: dict[str, list[int]] = field(default_factory=dict)

    def add(self, ev: Event) -> None:
        self.calls += 1
        self.records += int(ev.get("records", 0))
        cell = self.endpoints.setdefault(ev.get("endpoint") or "(none)", [0, 0])
        cell[0] += 1
        cell[1] += int(ev.get("records", 0))

    def as_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "records": self.records,
            "endpoints": {ep: {"calls": c, "records": r} for ep, (c, r) in self.endpoints.items()},
        }


WindowKey = tuple[str, str, str, int]  # (subject_type, subject, window size name, start ms)


def expected_totals(
    events: Iterable[Event], sizes: dict[str, int], org_of: dict[str, str]
) -> dict[WindowKey, Totals]:
    """Exact totals per (subject, fixed window) of the distinct (app_id, id) events."""
    out: dict[WindowKey, Totals] = {}
    for ev, stype, subject in _subjects(events, org_of):
        for name, size in sizes.items():
            start = ev["time"] - ev["time"] % size
            out.setdefault((stype, subject, name, start), Totals()).add(ev)
    return out


def window_key(value: dict[str, Any]) -> WindowKey:
    return (
        value["subject_type"],
        value["subject"],
        value["window"]["size"],
        ms(value["window"]["start"].replace("Z", "+00:00")),
    )


def duplicates(items: Iterable[Any]) -> dict[Any, int]:
    return {k: n for k, n in Counter(items).items() if n > 1}


@dataclass(frozen=True)
class CapSpec:
    """The test's own description of a cap, to predict its alerts and window `caps` entries."""

    key: str  # e.g. "tier:std:calls-15m", "org:acme:records-1h"
    metric: str  # "calls" or "records"
    size: str  # window name, e.g. "15m"
    size_ms: int
    limit: int
    ratios: tuple[float, ...] = (0.8, 1.0)
    severities: tuple[str, ...] | None = None  # default: critical from 1.0, else warning
    endpoint_prefix: str | None = None
    status_range: tuple[int, int] | None = None

    def counts(self, ev: Event) -> bool:
        status = ev.get("status", 200)
        if self.status_range is not None and not (
            self.status_range[0] <= status <= self.status_range[1]
        ):
            return False
        if self.endpoint_prefix is not None:
            return str(ev.get("endpoint") or "").startswith(self.endpoint_prefix)
        return True

    def amount(self, ev: Event) -> int:
        return 1 if self.metric == "calls" else int(ev.get("records", 0))

    def levels(self) -> list[tuple[float, str, int]]:
        out = []
        for i, ratio in enumerate(self.ratios):
            severity = (
                self.severities[i]
                if self.severities is not None
                else ("critical" if ratio >= 1.0 else "warning")
            )
            out.append((ratio, severity, max(1, math.ceil(ratio * self.limit - 1e-9))))
        return out


@dataclass(frozen=True)
class ExpectedAlert:
    id: str
    stype: str
    subject: str
    cap: CapSpec
    window_start: int
    ratio: float
    severity: str
    level: int
    used: int  # exact when events were applied in the order given, else the first sum >= level
    event_id: str
    crossed_at: int


CapsOf = Callable[[str, str], Sequence[CapSpec]]


def cap_usage(
    events: Iterable[Event], caps_of: CapsOf, org_of: dict[str, str]
) -> dict[tuple[str, str, str, int], int]:
    """(subject_type, subject, cap key, window start) -> usage, over distinct events."""
    out: dict[tuple[str, str, str, int], int] = {}
    for ev, stype, subject in _subjects(events, org_of):
        for cap in caps_of(stype, subject):
            if cap.counts(ev):
                start = ev["time"] - ev["time"] % cap.size_ms
                k = (stype, subject, cap.key, start)
                out[k] = out.get(k, 0) + cap.amount(ev)
    return out


def expected_cap_alerts(
    events: Iterable[Event], caps_of: CapsOf, org_of: dict[str, str]
) -> dict[str, ExpectedAlert]:
    """Every threshold the distinct events reach, by alert id. `used`, `event_id` and
    `crossed_at` are exact when the meter applies the events in the order given."""
    usage: dict[tuple[str, str, str, int], int] = {}
    out: dict[str, ExpectedAlert] = {}
    for ev, stype, subject in _subjects(events, org_of):
        for cap in caps_of(stype, subject):
            if not cap.counts(ev):
                continue
            start = ev["time"] - ev["time"] % cap.size_ms
            k = (stype, subject, cap.key, start)
            before = usage.get(k, 0)
            after = usage[k] = before + cap.amount(ev)
            for ratio, severity, level in cap.levels():
                if before < level <= after:
                    aid = cap_alert_id(stype, subject, cap.key, start, ratio)
                    out[aid] = ExpectedAlert(
                        aid, stype, subject, cap, start, ratio, severity, level, after,
                        ev["id"], ev["time"],
                    )  # fmt: skip
    return out


def _subjects(events: Iterable[Event], org_of: dict[str, str]) -> Iterable[tuple[Event, str, str]]:
    seen: set[tuple[str, str]] = set()
    for ev in events:
        if (ev["app_id"], ev["id"]) in seen:
            continue
        seen.add((ev["app_id"], ev["id"]))
        yield ev, "app", ev["app_id"]
        org = org_of.get(ev["app_id"], ev.get("org_id"))
        if org:
            yield ev, "org", org


def latest_windows(values: Iterable[dict[str, Any]]) -> dict[WindowKey, dict[str, Any]]:
    """The highest revision of each window."""
    out: dict[WindowKey, dict[str, Any]] = {}
    for v in values:
        k = window_key(v)
        if k not in out or v["revision"] > out[k]["revision"]:
            out[k] = v
    return out


def totals_of(values: Iterable[dict[str, Any]]) -> dict[WindowKey, dict[str, Any]]:
    """{window: {calls, records, endpoints}} of the latest revision of each window."""
    return {
        k: {"calls": v["calls"], "records": v["records"], "endpoints": v["endpoints"]}
        for k, v in latest_windows(values).items()
    }


def _names_port(text: str, port: int) -> bool:
    """Whether `text` names 127.0.0.1:`port` (and not a longer port that starts the same)."""
    return re.search(rf"127\.0\.0\.1:{port}(?!\d)", text) is not None


# -- worker processes ------------------------------------------------------------------------
class WorkerProcess:
    """One `python -m meter.cli worker ...` subprocess, logging to a file."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        web_port: int,
        data_dir: Path,
        module: str = "meter.cli",
    ) -> None:
        self.args = args
        self.log_path = log_path
        self.web_port = web_port
        self.data_dir = data_dir
        self.expected_exit = False
        env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
        env["PYTHONUNBUFFERED"] = "1"
        env["METER_STATE_DIR"] = str(data_dir.parent / "state")
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def died(self) -> bool:
        """Exited without the test asking it to."""
        return not self.expected_exit and self.proc.poll() is not None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait, and assert a clean exit (status 0)."""
        self.expected_exit = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"worker {self.pid} did not stop within {timeout:.0f}s of SIGTERM\n"
                + self.log_tail()
            ) from None
        finally:
            self._log.close()
        assert code == 0, f"worker {self.pid} exited with {code}\n{self.log_tail()}"
        return code

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to flush or commit anything."""
        self.expected_exit = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def ensure_gone(self) -> None:
        """Finalizer: stop without asserting (SIGTERM, then SIGKILL after a while)."""
        self.expected_exit = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._log.close()


@dataclass
class Deployment:
    """One meter deployment for one test: its group, topics, policy and worker processes."""

    bootstrap: str
    workdir: Path
    name: Callable[[str], str]
    policy: Path
    partitions: int = 4
    input_partitions: int | None = None
    grace: str = "1s"
    tick: str = "1s"
    idle_timeout: str = "10m"
    """Long: tests close windows with `push` (an event on every input partition), so a pause
    between a test's phases never closes windows on the clock. Tests of idleness set it short."""
    extra: Sequence[str] = ()
    workers: list[WorkerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.group = self.name("meter")
        self.input_topic = self.name("calls")
        self.alerts_topic = self.name("alerts")
        self.windows_topic = self.name("windows")
        self.dlq_topic = self.name("dlq")
        self.routed_topic = f"{self.group}-routed"
        self.changelog_topic = f"{self.group}-ledger-changelog"
        # Pre-created, so that no reader auto-creates one with the broker's default partitions.
        ensure_topics(
            self.bootstrap,
            [
                TopicSpec(self.input_topic, self.input_partitions or self.partitions),
                TopicSpec(self.alerts_topic, self.partitions),
                TopicSpec(self.windows_topic, self.partitions),
                TopicSpec(self.dlq_topic, self.partitions),
            ],
        )

    # workers ------------------------------------------------------------------------------
    def start_worker(
        self,
        data_dir: Path | None = None,
        label: str | None = None,
        module: str = "meter.cli",
    ) -> WorkerProcess:
        """Start `meter worker` (`module` runs it: a test wrapper may patch faust first)."""
        n = len(self.workers)
        label = label or f"w{n}"
        data_dir = data_dir or self.workdir / f"data-{label}"
        port = free_port()
        args = [
            "worker",
            "--policy", str(self.policy),
            "--bootstrap", self.bootstrap,
            "--group", self.group,
            "--input-topic", self.input_topic,
            "--alerts-topic", self.alerts_topic,
            "--windows-topic", self.windows_topic,
            "--dlq-topic", self.dlq_topic,
            "--partitions", str(self.partitions),
            "--grace", self.grace,
            "--tick", self.tick,
            "--idle-timeout", self.idle_timeout,
            "--web-port", str(port),
            "--data-dir", str(data_dir),
            *self.extra,
        ]  # fmt: skip
        worker = WorkerProcess(
            args, self.workdir / f"worker-{n}-{label}.log", port, data_dir, module
        )
        self.workers.append(worker)
        return worker

    def running(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive()]

    def died(self) -> bool:
        """True when a worker the test did not stop or kill has exited: stop waiting."""
        return any(w.died() for w in self.workers)

    def stop_all(self) -> None:
        for w in self.workers:
            if w.alive():
                w.stop()

    def close(self) -> None:
        for w in self.workers:
            w.ensure_gone()

    def logs(self, chars: int = 4000) -> str:
        return "\n".join(
            f"--- {w.log_path.name} (exit {w.poll()}) ---\n{w.log_tail(chars)}"
            for w in self.workers
        )

    # input --------------------------------------------------------------------------------
    def send(
        self,
        values: Sequence[bytes | None],
        *,
        keys: Sequence[bytes | None] | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> int:
        return produce(
            self.bootstrap,
            self.input_topic,
            values,
            keys=keys,
            headers=headers,
            partition=partition,
        )

    def send_events(
        self,
        events: Sequence[Event],
        *,
        keys: Sequence[bytes | None] | None = None,
        partition: int | None = None,
    ) -> int:
        """One plain JSON event per record."""
        return self.send([dumps(e) for e in events], keys=keys, partition=partition)

    def push(self, time_ms: int, apps: Sequence[str]) -> list[Event]:
        """One event of each app at `time_ms` on every input partition: every input partition's
        event time reaches `time_ms`, so every window that ends a grace before it closes. Returns
        the events sent (they count, in windows at `time_ms`)."""
        partitions = self.input_partitions or self.partitions
        sent = []
        for p in range(partitions):
            events = [event(f"push-{app}-{time_ms}-{p}", time_ms, app) for app in apps]
            self.send_events(events, partition=p)
            sent += events
        return sent

    def send_routed(self, values: Sequence[bytes], key: bytes) -> list[tuple[int, int]]:
        """Write records straight to the routed topic (as the router would): (partition,
        offset) of each."""
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        try:
            futures = [producer.send(self.routed_topic, value=v, key=key) for v in values]
            producer.flush(timeout=30)
            return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
        finally:
            producer.close()

    def commit_counter_offset(self, partition: int, offset: int) -> None:
        """Set the counting group's committed offset on a routed partition (no worker running)."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False
        )
        try:
            tp = TopicPartition(self.routed_topic, partition)
            consumer.assign([tp])
            consumer.commit({tp: OffsetAndMetadata(offset, "", -1)})
        finally:
            consumer.close()

    def metric(self, worker: WorkerProcess, name: str) -> float:
        """The value of an unlabelled series on a worker's /metrics page (0 when absent)."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5
        ) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        return 0.0

    def metric_total(self, worker: WorkerProcess, name: str) -> float:
        """The sum of every series of metric `name` on a worker's /metrics page."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5
        ) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((f"{name} ", f"{name}{{"))
        )

    # output -------------------------------------------------------------------------------
    def read(
        self, topic: str, expect: int | None, timeout: float = 120.0, settle: float = 3.0
    ) -> list[ConsumerRecord]:
        return read_all(
            self.bootstrap, topic, expect=expect, timeout=timeout, settle=settle, abort=self.died
        )

    def alerts(self, expect: int | None = None, **kw: Any) -> list[ConsumerRecord]:
        return self.read(self.alerts_topic, expect, **kw)

    def windows(self, expect: int | None = None, **kw: Any) -> list[ConsumerRecord]:
        return self.read(self.windows_topic, expect, **kw)

    def dlq(self, expect: int | None = None, **kw: Any) -> list[ConsumerRecord]:
        return self.read(self.dlq_topic, expect, **kw)

    def members(self) -> list[int]:
        """Web ports of the group's members that have partitions assigned (the web URL is in
        each faust member's metadata)."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="meter-tests")
        try:
            group = admin.describe_groups([self.group]).get(self.group) or {}
        except KafkaError:
            return []
        finally:
            admin.close()
        ports = []
        for m in group.get("members", ()):
            assigned = (m.get("member_assignment") or {}).get("assigned_partitions")
            for w in self.workers:
                if assigned and _names_port(str(m.get("member_metadata")), w.web_port):
                    ports.append(w.web_port)
        return sorted(ports)

    def routed_offsets(self) -> dict[int, tuple[int, int]]:
        """Per routed partition: (the counting group's committed offset, the end offset)."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="meter-tests")
        try:
            parts = [
                TopicPartition(self.routed_topic, p)
                for p in sorted(consumer.partitions_for_topic(self.routed_topic) or ())
            ]
            ends = consumer.end_offsets(parts)
            try:
                committed = admin.list_group_offsets({self.group: None}).get(self.group, {})
            except KafkaError:
                committed = {}
            out = {}
            for tp in parts:
                done = committed.get(tp)
                out[tp.partition] = (done.offset if done is not None else -1, ends[tp])
            return out
        finally:
            admin.close()
            consumer.close()

    def watermarks(self) -> dict[int, float]:
        """Per routed partition, the watermark windows close on (epoch s), from the workers'
        metrics (a partition a worker no longer owns is not on its page)."""
        out: dict[int, float] = {}
        for w in self.running():
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{w.web_port}/metrics", timeout=5
                ) as response:
                    text = response.read().decode()
            except OSError:
                continue
            for m in re.finditer(
                r'^meter_watermark_seconds\{partition="(\d+)"\} (\S+)$', text, re.M
            ):
                out[int(m.group(1))] = float(m.group(2))
        return out

    def wait_settled(self, timeout: float = 120.0, watermark_ms: int | None = None) -> None:
        """Wait until the pipeline has done everything with what was produced so far: the input
        routed and committed, every routed partition's watermark at `watermark_ms` (when given:
        the progress reports that follow the last events can come a tick or two after them),
        every routed record up to now counted and committed, and every running worker's outbox
        empty (all outputs acknowledged by Kafka). Outputs read after this are final; reading on
        "nothing new for a while" can catch a worker mid-recovery."""
        self.wait_consumed(timeout)
        if watermark_ms is not None:
            target = watermark_ms / 1000

            def reached() -> bool:
                marks = self.watermarks()
                return len(marks) == self.partitions and min(marks.values()) >= target

            wait_until(reached, timeout, interval=0.5, what="every watermark", abort=self.died)
        ends = {p: end for p, (_, end) in self.routed_offsets().items()}

        def counted() -> bool:
            now = self.routed_offsets()
            return all(now[p][0] >= end for p, end in ends.items())

        try:
            wait_until(counted, timeout, interval=0.5, what="the routed records to be counted",
                       abort=self.died)  # fmt: skip
        except AssertionError as exc:
            where = ", ".join(
                f"partition {p}: committed {done} of {ends.get(p)}"
                for p, (done, _) in self.routed_offsets().items()
            )
            raise AssertionError(f"{exc} (group {self.group}, routed {where})") from None

        def drained() -> bool:
            try:
                return all(
                    self.metric_total(w, "meter_outbox_pending_records") == 0
                    for w in self.running()
                )
            except OSError:  # a worker not serving its page yet
                return False

        wait_until(drained, timeout, interval=0.5, what="every outbox to drain", abort=self.died)

    def input_offsets(self) -> dict[int, tuple[int, int]]:
        """Per input partition: (the router group's committed offset, the end offset)."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="meter-tests")
        try:
            parts = [
                TopicPartition(self.input_topic, p)
                for p in sorted(consumer.partitions_for_topic(self.input_topic) or ())
            ]
            ends = consumer.end_offsets(parts)
            try:
                router = f"{self.group}-router"
                committed = admin.list_group_offsets({router: None}).get(router, {})
            except KafkaError:
                committed = {}
            out = {}
            for tp in parts:
                done = committed.get(tp)
                offset = done.offset if done is not None and done.offset >= 0 else 0
                out[tp.partition] = (offset, ends[tp])
            return out
        finally:
            admin.close()
            consumer.close()

    def input_lag(self) -> int:
        """Input records not yet consumed by stage 1 (faust commits every few seconds)."""
        return sum(end - done for done, end in self.input_offsets().values())

    def wait_consumed(self, timeout: float = 120.0) -> None:
        """Wait until stage 1 has consumed (and committed) everything produced so far. Whatever
        is produced afterwards is routed behind it on every routed partition, so it cannot move
        a watermark past it."""
        try:
            wait_until(
                lambda: self.input_lag() == 0,
                timeout,
                interval=0.5,
                what="the worker to consume the input",
                abort=self.died,
            )
        except AssertionError as exc:
            where = ", ".join(
                f"partition {p}: committed {done} of {end}"
                for p, (done, end) in self.input_offsets().items()
            )
            raise AssertionError(f"{exc} (group {self.group}, input {where})") from None

    def evict(self, worker: WorkerProcess) -> None:
        """Remove a SIGKILLed worker's consumers from its two groups (the faust group that
        counts, the router's), as the coordinator does once their sessions time out (faust's
        default: 60 s), so the restarted worker is not kept waiting a minute for that. faust
        members carry the web URL in their metadata; router members have it in their client id."""
        assert not worker.alive()
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="meter-tests")
        router = f"{self.group}-router"
        try:
            groups = admin.describe_groups([self.group, router])
            for name, group in groups.items():
                dead = [
                    MemberToRemove(member_id=m["member_id"])
                    for m in group.get("members", ())
                    if (
                        m.get("client_id") == f"meter-router-127.0.0.1:{worker.web_port}"
                        if name == router
                        else _names_port(str(m.get("member_metadata")), worker.web_port)
                    )
                ]
                if dead:
                    with contextlib.suppress(KafkaError):  # already gone
                        admin.remove_group_members(name, dead)
        finally:
            admin.close()

    def send_each(
        self, records: Sequence[tuple[bytes | None, list[tuple[str, bytes]]]], partition: int = 0
    ) -> list[tuple[int, int]]:
        """Send (value, headers) records in order to one input partition; their offsets."""
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        try:
            futures = [
                producer.send(self.input_topic, value=v, headers=h, partition=partition)
                for v, h in records
            ]
            producer.flush(timeout=30)
            return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
        finally:
            producer.close()

    def settled_windows(
        self, keys: Iterable[WindowKey], timeout: float = 120.0, quiet: float = 3.0
    ) -> list[dict[str, Any]]:
        """Window records, read until every window in `keys` has one and nothing new arrived
        for `quiet` seconds (or `timeout` passed: the caller's assertions show what is off)."""
        wanted = set(keys)
        last: list[dict[str, Any]] = []
        quiet_since = time.monotonic()

        def settled() -> bool:
            nonlocal last, quiet_since
            now = values_of(read_all(self.bootstrap, self.windows_topic, timeout=30))
            if len(now) != len(last):
                last, quiet_since = now, time.monotonic()
            return wanted <= {window_key(v) for v in last} and (
                time.monotonic() - quiet_since >= quiet
            )

        with contextlib.suppress(AssertionError):
            wait_until(settled, timeout, interval=0.5, what="window records", abort=self.died)
        return last


class BackgroundProducer(threading.Thread):
    """Produces `values` (with `keys`) to `topic` at a steady pace, in its own thread."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        values: Sequence[bytes],
        keys: Sequence[bytes | None],
        pause: float,
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.values, self.keys = bootstrap, topic, values, keys
        self.pause = pause
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
            try:
                for value, key in zip(self.values, self.keys, strict=True):
                    producer.send(self.topic, value=value, key=key)
                    self.sent += 1
                    time.sleep(self.pause)
                producer.flush(timeout=60)
            finally:
                producer.close()
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, timeout: float = 120.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the background producer did not finish"
        assert self.error is None, f"the background producer failed: {self.error!r}"
        assert self.sent == len(self.values)


def values_of(records: Iterable[ConsumerRecord]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]


def write_policy(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@contextlib.contextmanager
def deployment_factory(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> Iterator[Callable[..., Deployment]]:
    """For a test fixture: `make(policy_yaml, partitions=..., ...)` builds a `Deployment` in
    `tmp_path`; at the end every worker it started is stopped (killed if it hangs), even when
    the test failed, and the worker logs are printed (pytest shows them for failed tests)."""
    made: list[Deployment] = []

    def make(policy: str, **options: Any) -> Deployment:
        workdir = tmp_path / f"deployment-{len(made)}"
        workdir.mkdir()
        policy_path = write_policy(workdir / "policy.yaml", policy)
        n = len(made)
        names = unique if n == 0 else (lambda base: unique(f"{base}{n}"))
        d = Deployment(bootstrap, workdir, names, policy_path, **options)
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in made:
            d.close()
            print(d.logs())


def describe_differences(
    got: dict[WindowKey, dict[str, Any]], want: dict[WindowKey, dict[str, Any]], limit: int = 8
) -> str:
    """A short account of how window totals differ (calls and records per window)."""
    lines = []
    for k in sorted(set(got) | set(want), key=str):
        g, w = got.get(k), want.get(k)
        if g != w:
            gc = "missing" if g is None else f"{g['calls']} calls/{g['records']} records"
            wc = "none" if w is None else f"{w['calls']} calls/{w['records']} records"
            if g is not None and w is not None and gc == wc:
                gc, wc = f"endpoints {g.get('endpoints')}", f"{w.get('endpoints')}"
            lines.append(f"  {k[0]} {k[1]} {k[2]} {iso(k[3])}: got {gc}, want {wc}")
    head = f"{len(lines)} of {len(want)} windows differ"
    return "\n".join([head, *lines[:limit], *(["  ..."] if len(lines) > limit else [])])

"""A per-test meter deployment: its group, topics, policy, data dirs and worker processes, with
what a test does to it (send and push event time: `tests.harness.producer`; wait until settled,
read outputs, evict members)."""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.admin import MemberToRemove
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from meter.adapters.broker import free_port
from meter.adapters.topics import BROKER_DEFAULT, TopicSpec, ensure_topics
from tests.harness.data import values_of
from tests.harness.kafka import read_all
from tests.harness.oracle import WindowKey, window_key
from tests.harness.processes import WorkerProcess, _names_port, wait_until
from tests.harness.producer import Producing


@dataclass
class Deployment(Producing):
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
    replication: int | None = None
    """Of the topics the test creates (None: the broker's default, as the workers do)."""
    worker_bootstrap: str | None = None
    """Where meter's processes bootstrap (default `bootstrap`): the fault tests' proxy."""
    workers: list[WorkerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.group = self.name("meter")
        self.input_topic = self.name("calls")
        self.alerts_topic = self.name("alerts")
        self.windows_topic = self.name("windows")
        self.dlq_topic = self.name("dlq")
        self.quota_topic = self.name("quota")
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
                TopicSpec(self.quota_topic, self.partitions, {"cleanup.policy": "compact"}),
            ],
            replication=BROKER_DEFAULT if self.replication is None else self.replication,
        )

    @property
    def meter_bootstrap(self) -> str:
        return self.worker_bootstrap or self.bootstrap

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
            "--bootstrap", self.meter_bootstrap,
            "--group", self.group,
            "--input-topic", self.input_topic,
            "--alerts-topic", self.alerts_topic,
            "--windows-topic", self.windows_topic,
            "--dlq-topic", self.dlq_topic,
            "--quota-topic", self.quota_topic,
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

    def start_store(self, database: str, label: str = "store") -> WorkerProcess:
        """Start `meter store` on this deployment's output topics."""
        args = [
            "store", "--database", database, "--bootstrap", self.meter_bootstrap,
            "--windows-topic", self.windows_topic, "--alerts-topic", self.alerts_topic,
            "--group", self.group,
        ]  # fmt: skip
        store = WorkerProcess(args, self.workdir / f"{label}.log", 0, self.workdir / label)
        self.workers.append(store)
        return store

    def start_api(
        self, database: str, tokens_file: Path | None = None, label: str = "api"
    ) -> WorkerProcess:
        """Start `meter api` on this deployment's feed and `database`; its port is `web_port`."""
        port = free_port()
        args = [
            "api", "--policy", str(self.policy), "--bootstrap", self.meter_bootstrap,
            "--quota-topic", self.quota_topic, "--database", database, "--port", str(port),
        ]  # fmt: skip
        if tokens_file is not None:
            args += ["--tokens-file", str(tokens_file)]
        api = WorkerProcess(args, self.workdir / f"{label}.log", port, self.workdir / label)
        self.workers.append(api)
        return api

    def running(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive()]

    def running_workers(self) -> list[WorkerProcess]:
        """The running `meter worker` processes: only they count, and have an outbox and
        /metrics (`meter store` serves no port, `meter api` no /metrics)."""
        return [w for w in self.running() if w.args[0] == "worker"]

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

    def quota_feed(self, **kw: Any) -> dict[str, dict[str, Any] | None]:
        """The last record of each key on the quota feed (None: a tombstone)."""
        out: dict[str, dict[str, Any] | None] = {}
        for r in self.read(self.quota_topic, None, **kw):
            out[r.key.decode()] = None if r.value is None else json.loads(r.value)
        return out

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
        for w in self.running_workers():
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

            try:
                wait_until(reached, timeout, interval=0.5, what="every watermark",
                           abort=self.died)  # fmt: skip
            except AssertionError as exc:
                marks = self.watermarks()
                where = ", ".join(
                    f"partition {p}: {marks[p] - target:+.0f}s" if p in marks else f"{p}: none"
                    for p in range(self.partitions)
                )
                raise AssertionError(
                    f"{exc} (group {self.group}, watermarks against the target: {where}; "
                    f"routed committed/end: {self.routed_offsets()})"
                ) from None
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
                    for w in self.running_workers()
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

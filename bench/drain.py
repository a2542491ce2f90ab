"""Running one peer over the filled topic and turning its measurements into a `PeerResult`.

Subprocess peers write their own `Sample` (bench.measure); the meter worker is observed from the
outside: its `/metrics` endpoint is polled and its /proc entries are read by the harness.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.infra import REPO
from bench.measure import CLK_TCK, Sample, cpu_ticks, vmhwm_kb
from meter.adapters.broker import free_port

log = logging.getLogger(__name__)

METER_POLL_S = 0.1
STALL_S = 30.0
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


@dataclass
class PeerResult:
    """One row of the report."""

    key: str
    name: str
    expected: int
    drained: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mib: float = 0.0
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.drained >= self.expected

    @property
    def events_per_s(self) -> float:
        return self.drained / self.seconds if self.ok and self.seconds > 0 else 0.0

    @property
    def cpu_per_million(self) -> float:
        return self.cpu_seconds * 1e6 / self.drained if self.ok and self.drained else 0.0

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ok=self.ok, events_per_s=self.events_per_s, cpu_per_million=self.cpu_per_million)
        return out

    def measured(self, s: Sample) -> PeerResult:
        self.drained = s.events
        self.seconds = s.t_last - s.t_first
        self.cpu_seconds = (s.cpu_last - s.cpu_first) / CLK_TCK
        self.peak_rss_mib = s.vmhwm_kb / 1024
        return self


def drain_timeout(events: int) -> float:
    """Generous: start-up plus 200 events/s (naive faust does a few hundred)."""
    return 120.0 + events / 200


class Process:
    """A peer subprocess in its own session, logging to a file; stopped with SIGTERM then KILL."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        base = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
        base["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**base, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(30)
        self._log.close()


def run_reporting_peer(
    result: PeerResult, cmd: list[str], workdir: Path, *, exits_itself: bool = False
) -> PeerResult:
    """Run a peer that writes its own `Sample` to `<workdir>/result.json`; stop it afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "result.json"
    proc = Process([*cmd, str(path)], workdir / "peer.log")
    deadline = time.monotonic() + drain_timeout(result.expected)
    try:
        while not path.exists():
            if not proc.alive():
                result.error = f"exited with {proc.proc.returncode} before draining"
                log.error("%s: %s\n%s", result.name, result.error, proc.tail())
                return result
            if time.monotonic() > deadline:
                result.error = "timed out"
                log.error("%s: timed out\n%s", result.name, proc.tail())
                return result
            time.sleep(0.1)
        result.measured(Sample.from_json(json.loads(path.read_text())))
        if exits_itself:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.proc.wait(30)
        return result
    finally:
        proc.stop()


PROGRESS = ("meter_events_total", "meter_replayed_state_keys_total")
"""What the drain loop reads 10 times a second: a restricted scrape, so that the probe costs the
worker little however many series it has (10,000 organisations are 10,000 series of each
per-organisation counter)."""


def scrape_text(port: int, names: tuple[str, ...] = ()) -> str:
    """A worker's /metrics page (only `names`' series when given); empty while it is not
    serving yet."""
    query = "?" + "&".join(f"name[]={n}" for n in names) if names else ""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics{query}", timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def scrape(port: int, names: tuple[str, ...] = ()) -> dict[str, float]:
    """A worker's /metrics as {name{labels}: value}; empty while it is not serving yet."""
    return parse_metrics(scrape_text(port, names))


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


@dataclass
class MeterTopics:
    group: str
    input: str
    alerts: str
    windows: str
    dlq: str

    @classmethod
    def named(cls, prefix: str, input_topic: str) -> MeterTopics:
        return cls(prefix, input_topic, f"{prefix}-alerts", f"{prefix}-windows", f"{prefix}-dlq")


def start_meter(
    bootstrap: str, topics: MeterTopics, policy: Path, partitions: int, workdir: Path
) -> tuple[Process, int]:
    """A `meter worker` process with its own group, topics, data dir and web port."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        sys.executable, "-m", "meter.cli", "worker",
        "--policy", str(policy),
        "--bootstrap", bootstrap,
        "--group", topics.group,
        "--input-topic", topics.input,
        "--alerts-topic", topics.alerts,
        "--windows-topic", topics.windows,
        "--dlq-topic", topics.dlq,
        "--partitions", str(partitions),
        "--data-dir", str(workdir / "data"),
        "--web-port", str(port),
    ]  # fmt: skip
    env = {"METER_STATE_DIR": str(workdir / "state")}
    return Process(cmd, workdir / "worker.log", env), port


def run_meter(
    result: PeerResult,
    bootstrap: str,
    topics: MeterTopics,
    policy: Path,
    partitions: int,
    workdir: Path,
    profile_s: float = 0.0,
) -> PeerResult:
    """Drain with a meter worker: first event = first scrape with meter_events_total > 0,
    last = first scrape with meter_events_total >= expected (scrapes every 100 ms)."""
    proc, port = start_meter(bootstrap, topics, policy, partitions, workdir)
    deadline = time.monotonic() + drain_timeout(result.expected)
    t_first = 0.0
    cpu_first = 0
    profiler: Process | None = None
    text = ""
    last_count, last_change = -1, time.monotonic()
    changed_at, changed_cpu = 0.0, 0
    try:
        while True:
            metrics = parse_metrics(scrape_text(port, PROGRESS))
            now = time.time()
            count = int(metrics.get("meter_events_total", 0))
            if count != last_count:
                last_count, last_change = count, time.monotonic()
                changed_at, changed_cpu = now, cpu_ticks(proc.pid)
            if count and not t_first:
                t_first, cpu_first = now, cpu_ticks(proc.pid)
                if profile_s > 0:
                    profiler = start_profiler(proc.pid, profile_s, workdir)
            if count >= result.expected:
                sample = Sample(result.expected, t_first, now, cpu_first, cpu_ticks(proc.pid), 0)
                sample.vmhwm_kb = vmhwm_kb(proc.pid)
                result.measured(sample)
                text = scrape_text(port)
                result.notes.update(meter_outputs(parse_metrics(text)))
                # A routed record applied twice is counted twice in meter_events_total although
                # the state skips it (replayed keys): then reaching N does not prove all counted.
                replayed = metrics.get("meter_replayed_state_keys_total", 0)
                if replayed or count > result.expected:
                    result.notes["replayed_state_keys"] = replayed
                    result.notes["events_total_overshoot"] = count - result.expected
                return result
            if not proc.alive():
                result.error = f"worker exited with {proc.proc.returncode} at {count} events"
                log.error("%s: %s\n%s", result.name, result.error, proc.tail())
                return result
            stalled = count and time.monotonic() - last_change > STALL_S
            if stalled and consumed_all(parse_metrics(text := scrape_text(port))):
                result.drained = count
                rate = count / (changed_at - t_first) if changed_at > t_first else 0.0
                cpu = (changed_cpu - cpu_first) / CLK_TCK * 1e6 / count
                result.notes["events_per_s_until_stall"] = rate
                result.notes.update(meter_outputs(parse_metrics(text)))
                result.error = (
                    f"stalled at {count:,} events with its input and routed topics fully "
                    f"consumed: events lost ({rate:,.0f} events/s, {cpu:,.1f} CPU s per "
                    "million until then)"
                )
                log.error("%s: %s", result.name, result.error)
                return result
            if time.monotonic() > deadline:
                result.drained = count
                result.error = f"timed out at {count} events"
                log.error("%s: %s\n%s", result.name, result.error, proc.tail())
                return result
            time.sleep(METER_POLL_S)
    finally:
        (workdir / "metrics.txt").write_text(scrape_text(port) or text)
        if profiler is not None:
            profiler.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.proc.wait(60)
            profiler.stop()
        proc.stop()


def meter_outputs(metrics: dict[str, float]) -> dict[str, float]:
    """What the worker published and how many events it counted as late, from its metrics."""

    def total(prefix: str) -> float:
        return sum(v for k, v in metrics.items() if k.startswith(prefix))

    return {
        "alerts": total("meter_alerts_total"),
        "final window records": total('meter_window_records_total{type="final"'),
        "amendments": total('meter_window_records_total{type="amendment"'),
        "late events": total("meter_late_events_total"),
    }


def consumed_all(metrics: dict[str, float]) -> bool:
    """The worker's consumer lag is 0 on every partition it reads, changelogs aside."""
    lags = [
        v
        for k, v in metrics.items()
        if k.startswith("meter_consumer_lag_records") and "-changelog" not in k
    ]
    return bool(lags) and not any(lags)


def start_profiler(pid: int, seconds: float, workdir: Path) -> Process | None:
    """py-spy sampling the worker (collapsed stacks), when py-spy is installed."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        log.warning("--profile: py-spy is not installed in %s", spy.parent)
        return None
    out = workdir / "profile.txt"
    cmd = [str(spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "200"]
    cmd += ["--duration", str(int(seconds)), "--output", str(out), "--nonblocking"]
    return Process(cmd, workdir / "py-spy.log")

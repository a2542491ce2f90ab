"""The benchmark report: the machine, the command, the results table, alert latency and notes."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.drain import PeerResult
from bench.latency import LatencyResult

# Inclusive shares of a few meter functions in a py-spy profile: (label, frame regex).
PROFILE_CALLS = (
    ("route: decode_record (meter/core/events.py)", r"decode_record \("),
    ("route: re-key and send (Router._route, minus decoding)", r"_route \(meter/"),
    ("count: PartitionLedger.apply (meter/core/ledger/)", r"apply \(meter/core/ledger/ledger\.py"),
    ("count: ledger flush + TableStore writes", r"flush \(meter/core/ledger/ledger\.py"),
    ("count: decode_routed (meter/adapters/wire.py)", r"decode_routed \("),
    ("count: publish alerts and window totals", r"_publish \(meter/"),
    ("/metrics scrapes (prometheus_client)", r"prometheus_client/"),
)
# Self time by where the sampled frame's code lives: (label, path regex), first match wins.
PROFILE_AREAS = (
    ("meter.core", r"\(meter/core/"),
    ("meter.adapters", r"\(meter/adapters/"),
    ("json (C encoder/decoder wrappers)", r"\(json/"),
    ("faust", r"\(faust/"),
    ("mode (faust's service layer)", r"\(mode/"),
    ("aiokafka", r"\(aiokafka/"),
    ("asyncio and selectors (event loop)", r"\((asyncio/|selectors\.py)"),
    ("rocksdict / RocksDB", r"rocksdict"),
    ("prometheus_client", r"\(prometheus_client/"),
)


LATENCY_TITLE = "## Alert latency (meter, single-event records)"


@dataclass
class Machine:
    cpus: int
    cpu_model: str
    ram_gib: float
    os_name: str
    python: str
    java: str
    kafka: str
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def probe(cls, kafka: str) -> Machine:
        model = "unknown"
        for line in _read("/proc/cpuinfo").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = re.search(r"MemTotal:\s+(\d+) kB", _read("/proc/meminfo"))
        pretty = re.search(r'PRETTY_NAME="([^"]*)"', _read("/etc/os-release"))
        return cls(
            cpus=os.cpu_count() or 0,
            cpu_model=model,
            ram_gib=int(mem.group(1)) / 1024**2 if mem else 0.0,
            os_name=f"{pretty.group(1) if pretty else platform.system()}, "
            f"Linux {platform.release()}",
            python=platform.python_version(),
            java=_java_version(),
            kafka=kafka,
            load_start=os.getloadavg(),
        )


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _java_version() -> str:
    try:
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    except OSError:
        return "not installed"
    lines = (done.stderr or done.stdout).splitlines()
    return lines[0].strip() if lines else "unknown"


def _load(avg: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in avg)


@dataclass
class Report:
    command: str
    date: str
    events: int
    partitions: int
    machine: Machine
    peers: list[PeerResult]
    latency: LatencyResult | None = None
    fill_seconds: float = 0.0
    batch_records: int = 0
    build_seconds: float | None = None
    profile: str | None = None
    notes: list[str] = field(default_factory=list)
    analysis: str = ""

    def _ratio(self, peer: PeerResult, key: str) -> str:
        base = next((p for p in self.peers if p.key == key and p.ok), None)
        if base is None or not peer.ok or not base.events_per_s:
            return "-"
        return f"{peer.events_per_s / base.events_per_s:.2f}"

    def table(self) -> list[str]:
        rows = [
            "| peer | events/s | CPU s per million events | peak RSS MiB | ratio to (a) "
            "| ratio to (c) | ratio to (f) | drained | counted late |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in self.peers:
            late = p.notes.get("late events")
            late_share = "-" if late is None or not p.drained else f"{late / p.drained:.1%}"
            if p.ok:
                rows.append(
                    f"| ({p.key}) {p.name} | {p.events_per_s:,.0f} | {p.cpu_per_million:,.1f} "
                    f"| {p.peak_rss_mib:,.0f} | {self._ratio(p, 'a')} | {self._ratio(p, 'c')} "
                    f"| {self._ratio(p, 'f')} "
                    f"| {p.drained:,} | {late_share} |"
                )
            else:
                rows.append(
                    f"| ({p.key}) {p.name} | failed: {p.error} | - | - | - | - | - | {p.drained:,} "
                    "| - |"
                )
        return rows

    def render(self) -> str:
        m = self.machine
        out = [
            "# meter benchmark",
            "",
            f"Run on {self.date}: {self.events:,} events, {self.partitions} partitions per "
            "topic, one peer at a time on the same broker.",
            "",
            "```sh",
            self.command,
            "```",
            "",
            "## Results",
            "",
            *self.table(),
            "",
        ]
        if self.latency is not None:
            out += self._latency()
        out += [
            "## Machine",
            "",
            f"- CPUs: {m.cpus} x {m.cpu_model}",
            f"- RAM: {m.ram_gib:.1f} GiB",
            f"- OS: {m.os_name}",
            f"- Python {m.python}; Java: {m.java}; Kafka broker {m.kafka} (single node, KRaft, "
            "local)",
            f"- Load average (1/5/15 min) at start: {_load(m.load_start)}; at end: "
            f"{_load(m.load_end)}",
            "",
            "## Notes",
            "",
            *(f"- {n}" for n in self.notes),
            "",
        ]
        if self.profile:
            out += ["## Where the meter worker spends its time (py-spy)", "", self.profile, ""]
        if self.analysis:
            out += [self.analysis.rstrip(), ""]
        return "\n".join(out)

    def _latency(self) -> list[str]:
        lat = self.latency
        assert lat is not None
        if lat.error:
            return [LATENCY_TITLE, "", f"Failed: {lat.error}", ""]
        return [
            LATENCY_TITLE,
            "",
            f"Fixed-rate load: {lat.rate:,.0f} events/s asked ({lat.achieved_rate:,.0f} achieved) "
            f"for {lat.seconds:.0f} s, {lat.produced:,} events with event time = now; a policy "
            f"of 1-minute caps per app (calls limit {lat.limit_calls}, records limit "
            f"{lat.limit_calls * 34}, thresholds 10%, 20%, ..., 100%) crossed every minute.",
            "",
            "| alerts measured | p50 ms | p99 ms | max ms | p50 ms (received) "
            "| p99 ms (received) |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {lat.alerts} | {lat.p50_ms:.1f} | {lat.p99_ms:.1f} | {lat.max_ms:.1f} "
            f"| {lat.seen_p50_ms:.1f} | {lat.seen_p99_ms:.1f} |",
            "",
            "Latency = the alert record's Kafka timestamp (the worker stamps it with the time it "
            "began counting the routed batch that crossed the threshold) minus the time the "
            "harness handed the alert's `event_id` to its producer. *Received* = the time the "
            "harness's alert consumer got the alert instead of the record timestamp: it adds "
            "publishing, the broker and a consumer poll (up to 100 ms).",
            "",
        ]


def summarise_profile(path: Path, top: int = 15) -> str | None:
    """Inclusive shares of some meter functions, self time by area and the top self-time
    functions of a py-spy raw (collapsed stacks) profile."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    stacks: list[tuple[str, int]] = []
    for line in lines:
        stack, _, samples = line.rpartition(" ")
        if stack and samples.isdigit():
            stacks.append((stack, int(samples)))
    total = sum(c for _, c in stacks)
    if not total:
        return None
    out = [
        f"{total:,} samples at 200 Hz of the worker's threads during an extra, untimed drain "
        "of the single-event topic (py-spy, --nonblocking).",
        "",
        "| function (inclusive) | share |",
        "|---|---:|",
    ]
    for label, pattern in PROFILE_CALLS:
        rx = re.compile(pattern)
        n = sum(c for stack, c in stacks if rx.search(stack))
        out.append(f"| {label} | {100 * n / total:.1f}% |")
    areas: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for stack, hits in stacks:
        frame = stack.split(";")[-1]
        leaf[re.sub(r":\d+\)", ")", frame)] += hits
        area = next((lbl for lbl, rx in PROFILE_AREAS if re.search(rx, frame)), "other")
        areas[area] += hits
    out += ["", "| where (self time) | share |", "|---|---:|"]
    out += [f"| {a} | {100 * c / total:.1f}% |" for a, c in areas.most_common()]
    out += ["", "| function (self time) | share |", "|---|---:|"]
    out += [f"| `{f}` | {100 * c / total:.1f}% |" for f, c in leaf.most_common(top)]
    return "\n".join(out)


def ordered(peers: Sequence[PeerResult]) -> list[PeerResult]:
    return sorted(peers, key=lambda p: p.key)

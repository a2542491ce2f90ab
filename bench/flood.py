"""On demand: a flood of distinct unknown app ids next to live traffic of known apps.

    python -m bench.flood [--unknown 100000] [--rate 100] [--probes 30] [--partitions 4]
                          [--out FILE.json]

One `meter worker` reads a fresh input topic. Known apps send `--rate` calls per second of live
traffic (event time: now) for the whole run. After a warm-up, `--unknown` calls from as many
distinct app ids that no policy knows are produced as fast as the producer goes: a burst many
times the live rate. While the flood drains, `--probes` known probe apps send one call each, one
per second; each probe app has a cap of one call per 15 minutes, so each probe call raises an
alert, and the time from handing it to the producer to receiving its alert is measured.

Reported (and written to `--out`): the flood's drain time and events/s; the worker's RSS over
time; its RocksDB size and state keys; the number of series on `/metrics` before and after;
alerts by kind, against the unknown-app limit (`--unknown-app-alerts` per routed partition per
day, plus one `unknown_app_flood` per partition); calls counted per known organisation against
calls sent (exact or not); the probe alerts' latencies. Uses METER_KAFKA_BOOTSTRAP when set, else
starts a local broker. Figures in RELIABILITY.md (*Flood*).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.drain import MeterTopics, parse_metrics, scrape_text, start_meter
from bench.infra import connect, create_topics
from bench.latency import percentile
from bench.measure import rss_mib, size_mib

log = logging.getLogger("bench.flood")

KNOWN = [(f"app-{i}", f"org-{i % 3}") for i in range(9)]
WARM_UP_S = 15.0
SAMPLE_S = 1.0


def policy_text(probes: int) -> str:
    """Known apps on a tier with four window sizes (every app, unknown ones too, has a window of
    each); probe apps with a cap of one call per 15 minutes."""
    lines = [
        "version: 1",
        "tiers:",
        "  std:",
        "    caps:",
        "      - {id: calls-15m, metric: calls, window: 15m, limit: 100000}",
        "      - {id: calls-1h, metric: calls, window: 1h, limit: 400000}",
        "      - {id: records-1d, metric: records, window: 1d, limit: 10000000}",
        "      - {id: calls-month, metric: calls, window: month, limit: 100000000}",
        "  probe:",
        "    caps:",
        "      - {id: calls-15m, metric: calls, window: 15m, limit: 1, thresholds: [1.0]}",
        "orgs:",
        *[f"  {org}: {{}}" for org in sorted({o for _, o in KNOWN})],
        "  probes: {}",
        "apps:",
        *[f"  {app}: {{org: {org}, tier: std}}" for app, org in KNOWN],
        *[f"  probe-{i}: {{org: probes, tier: probe}}" for i in range(probes)],
    ]
    return "\n".join(lines) + "\n"


@dataclass
class FloodResult:
    unknown: int
    rate: float
    probes: int
    partitions: int
    unknown_app_alerts_per_day: int = 100
    produce_s: float = 0.0
    drain_s: float = 0.0
    rss_mib: list[tuple[float, float]] = field(default_factory=list)
    rss_before_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_after_mib: float = 0.0
    rocksdb_mib: float = 0.0
    state_keys: dict[str, float] = field(default_factory=dict)
    series_before: int = 0
    series_after: int = 0
    alerts: dict[str, int] = field(default_factory=dict)
    known_sent: dict[str, int] = field(default_factory=dict)
    known_counted: dict[str, int] = field(default_factory=dict)
    unknown_counted: int = 0
    probe_latency_s: list[float] = field(default_factory=list)
    probe_alerts_missing: int = 0
    error: str | None = None

    def summary(self) -> list[str]:
        lat = sorted(self.probe_latency_s)
        exact = self.known_sent == self.known_counted
        return [
            f"flood of {self.unknown:,} distinct unknown app ids produced in {self.produce_s:.1f}s "
            f"({self.unknown / max(self.produce_s, 1e-9):,.0f}/s, live known traffic "
            f"{self.rate:g}/s); counted {self.unknown_counted:,} in {self.drain_s:.0f}s "
            f"({self.unknown / max(self.drain_s, 1e-9):,.0f}/s)",
            f"worker RSS: {self.rss_before_mib:.0f} MiB before, peak {self.rss_peak_mib:.0f} MiB, "
            f"{self.rss_after_mib:.0f} MiB after; RocksDB {self.rocksdb_mib:.1f} MiB; state keys "
            + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(self.state_keys.items())),
            f"/metrics series: {self.series_before} before, {self.series_after} after",
            "alerts: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(self.alerts.items()))
            + f" (limit {self.unknown_app_alerts_per_day} unknown_app per partition per day, "
            f"{self.partitions} partitions)",
            f"known apps: {sum(self.known_sent.values()):,} calls sent, "
            f"{sum(self.known_counted.values()):,} counted, per organisation "
            + (
                "exact"
                if exact
                else f"NOT exact: sent {self.known_sent}, counted {self.known_counted}"
            ),
            f"probe alerts: {len(lat)} of {self.probes} received"
            + (f", latency p50 {percentile(lat, 0.5):.1f}s, max {lat[-1]:.1f}s" if lat else ""),
        ]


def _event(eid: str, app: str, now: float, org: str | None = None) -> bytes:
    value: dict[str, Any] = {"id": eid, "time": int(now * 1000), "app_id": app, "records": 1,
                             "endpoint": "/search", "status": 200}  # fmt: skip
    if org:
        value["org_id"] = org
    return json.dumps(value, separators=(",", ":")).encode()


def _series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


async def _live(producer: AIOKafkaProducer, topic: str, rate: float, stop: asyncio.Event,
                sent: Counter[str]) -> None:  # fmt: skip
    start, n = time.monotonic(), 0
    while not stop.is_set():
        due = int((time.monotonic() - start) * rate)
        while n < due:
            app, org = KNOWN[n % len(KNOWN)]
            await producer.send(topic, _event(f"live-{n}", app, time.time()))
            sent[org] += 1
            n += 1
        await asyncio.sleep(0.01)


async def _flood(producer: AIOKafkaProducer, topic: str, n: int, run: str) -> None:
    for i in range(n):
        await producer.send(topic, _event(f"flood-{i}", f"stranger-{run}-{i}", time.time()))
    await producer.flush()


async def _probes(producer: AIOKafkaProducer, topic: str, n: int,
                  sent_at: dict[str, float]) -> None:  # fmt: skip
    for i in range(n):
        app = f"probe-{i}"
        sent_at[app] = time.time()
        await producer.send(topic, _event(f"probe-{i}", app, time.time()))
        await asyncio.sleep(1.0)


async def _alerts(consumer: AIOKafkaConsumer, seen: dict[str, float], kinds: Counter[str]) -> None:
    while True:
        batches = await consumer.getmany(timeout_ms=100)
        now = time.time()
        for records in batches.values():
            for rec in records:
                alert = json.loads(rec.value)
                kinds[alert["kind"]] += 1
                if alert["subject"].startswith("probe-"):
                    seen.setdefault(alert["subject"], now)


async def _run(
    args: argparse.Namespace, bootstrap: str, workdir: Path, topics: MeterTopics, policy: Path
) -> FloodResult:
    result = FloodResult(args.unknown, args.rate, args.probes, args.partitions)
    run = topics.group.removeprefix("flood-")
    worker, port = start_meter(bootstrap, topics, policy, args.partitions, workdir)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    consumer = AIOKafkaConsumer(topics.alerts, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)  # fmt: skip
    await producer.start()
    await consumer.start()
    sent: Counter[str] = Counter()
    probe_sent: dict[str, float] = {}
    probe_seen: dict[str, float] = {}
    kinds: Counter[str] = Counter()
    stop = asyncio.Event()
    t0 = time.monotonic()

    async def sample() -> None:
        while True:
            result.rss_mib.append((round(time.monotonic() - t0, 1), round(rss_mib(worker.pid), 1)))
            await asyncio.sleep(SAMPLE_S)

    tasks = [asyncio.create_task(_alerts(consumer, probe_seen, kinds)),
             asyncio.create_task(sample())]  # fmt: skip
    try:
        while not scrape_text(port):
            if not worker.alive():
                raise RuntimeError(f"the worker exited:\n{worker.tail()}")
            await asyncio.sleep(0.5)
        live = asyncio.create_task(_live(producer, topics.input, args.rate, stop, sent))
        tasks.append(live)
        await asyncio.sleep(WARM_UP_S)
        result.series_before = _series(scrape_text(port))
        result.rss_before_mib = rss_mib(worker.pid)
        flood_at = time.monotonic()
        probes = asyncio.create_task(_probes(producer, topics.input, args.probes, probe_sent))
        await _flood(producer, topics.input, args.unknown, run)
        result.produce_s = time.monotonic() - flood_at
        deadline = time.monotonic() + args.timeout
        while True:
            metrics = parse_metrics(scrape_text(port))
            counted = int(metrics.get("meter_unknown_app_events_total", 0))
            if counted >= args.unknown and result.drain_s == 0:
                result.drain_s = time.monotonic() - flood_at
            if result.drain_s and probes.done() and len(probe_seen) >= args.probes:
                break
            if time.monotonic() > deadline or not worker.alive():
                result.error = f"flood not drained: {counted:,} of {args.unknown:,} counted"
                break
            await asyncio.sleep(0.2)
        stop.set()
        await live
        await producer.flush()
        expected = sum(sent.values())
        while time.monotonic() < deadline:  # the live calls after the flood
            metrics = parse_metrics(scrape_text(port))
            known = {o: int(metrics.get(f'meter_calls_total{{org="{o}"}}', 0)) for o in sent}
            if sum(known.values()) >= expected:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # the last alerts
        text = scrape_text(port)
        metrics = parse_metrics(text)
        result.series_after = _series(text)
        result.rss_after_mib = rss_mib(worker.pid)
        result.rss_peak_mib = max((r for _, r in result.rss_mib), default=0.0)
        for k, v in metrics.items():
            if k.startswith("meter_state_keys{"):
                kind = k.split('kind="')[1].split('"')[0]
                result.state_keys[kind] = result.state_keys.get(kind, 0.0) + v
        result.known_sent = dict(sorted(sent.items()))
        result.known_counted = {
            o: int(metrics.get(f'meter_calls_total{{org="{o}"}}', 0)) for o in sorted(sent)
        }
        result.unknown_counted = int(metrics.get("meter_unknown_app_events_total", 0))
        result.alerts = dict(kinds)
        result.probe_latency_s = [probe_seen[a] - probe_sent[a] for a in probe_seen]
        result.probe_alerts_missing = args.probes - len(probe_seen)
        result.rocksdb_mib = size_mib(workdir / "data")
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()
        await consumer.stop()
        worker.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unknown", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=100.0, help="live known calls per second")
    parser.add_argument("--probes", type=int, default=30)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="meter-flood-"))
    kafka = connect(workdir / "kafka")
    run = uuid.uuid4().hex[:8]
    topics = MeterTopics.named(f"flood-{run}", f"flood-{run}-calls")
    worker_dir = workdir / "worker"
    worker_dir.mkdir(parents=True)
    policy = worker_dir / "policy.yaml"
    policy.write_text(policy_text(args.probes))
    try:
        create_topics(kafka.bootstrap, [topics.input], args.partitions)
        result = asyncio.run(_run(args, kafka.bootstrap, worker_dir, topics, policy))
    finally:
        kafka.close()
    for line in result.summary():
        print(line)
    if result.error:
        print(f"ERROR: {result.error}; worker log in {workdir}")
    if args.out:
        args.out.write_text(json.dumps(asdict(result), indent=1) + "\n")
    if not result.error:
        shutil.rmtree(workdir, ignore_errors=True)
    exact = result.known_sent == result.known_counted and not result.probe_alerts_missing
    return 0 if exact and not result.error else 1


if __name__ == "__main__":
    sys.exit(main())

"""Alert latency of the meter under a fixed-rate load: events stamped with the current time are
produced at a steady rate against a policy whose small one-minute caps are crossed all the time;
latency = the alert record's Kafka timestamp (set by the worker when it emits the alert) minus
the produce time of the event named by the alert's `event_id`."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.drain import MeterTopics, scrape, start_meter
from bench.events import APPS, ENDPOINTS
from bench.infra import create_topics

log = logging.getLogger(__name__)

RATIOS = [round(0.1 * i, 1) for i in range(1, 11)]
MEAN_RECORDS = 34
TICK_S = 0.005


@dataclass
class LatencyResult:
    rate: float
    seconds: float
    produced: int = 0
    achieved_rate: float = 0.0
    alerts: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    seen_p50_ms: float = 0.0  # alert received by the harness's consumer, minus produce time
    seen_p99_ms: float = 0.0
    limit_calls: int = 0
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def policy_text(rate: float) -> tuple[str, int]:
    """Every app crosses 10%, 20%, ..., 100% of a calls cap and of a records cap on 1m windows
    within the first half of every minute; returns the YAML and the calls limit."""
    per_app_minute = rate * 60 / len(APPS)
    calls = max(20, int(per_app_minute / 2))
    records = calls * MEAN_RECORDS
    lines = [
        "version: 1",
        "tiers:",
        "  bench:",
        "    caps:",
        f"      - {{id: calls-1m, metric: calls, window: 1m, limit: {calls}, "
        f"thresholds: {RATIOS}}}",
        f"      - {{id: records-1m, metric: records, window: 1m, limit: {records}, "
        f"thresholds: {RATIOS}}}",
        "orgs:",
        "  bench-org: {name: Bench}",
        "apps:",
        *(f"  {app}: {{org: bench-org, tier: bench}}" for app, _, _ in APPS),
    ]
    return "\n".join(lines) + "\n", calls


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def _collect(consumer: AIOKafkaConsumer, out: list[tuple[int, float, str]]) -> None:
    while True:
        batches = await consumer.getmany(timeout_ms=100)
        seen = time.time()
        for records in batches.values():
            for rec in records:
                out.append((rec.timestamp, seen, json.loads(rec.value).get("event_id", "")))


async def _load(
    bootstrap: str, topic: str, rate: float, seconds: float, produced: dict[str, float]
) -> float:
    """Produce at `rate` events/s for `seconds`; returns the achieved duration."""
    rng = random.Random(7)
    apps = [a for a, _, _ in APPS]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        start = time.monotonic()
        sent = 0
        total = int(rate * seconds)
        while sent < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            while sent < due:
                app = apps[sent % len(apps)]
                now = time.time()
                eid = f"lat-{sent}"
                value = {
                    "id": eid,
                    "time": int(now * 1000),
                    "app_id": app,
                    "endpoint": ENDPOINTS[sent % len(ENDPOINTS)],
                    "records": int(rng.random() * 2 * MEAN_RECORDS + 1),
                }
                produced[eid] = now
                await producer.send(
                    topic, json.dumps(value, separators=(",", ":")).encode(), key=app.encode()
                )
                sent += 1
            await asyncio.sleep(TICK_S)
        await producer.flush()
        return time.monotonic() - start
    finally:
        await producer.stop()


async def _measure(
    bootstrap: str, topics: MeterTopics, partitions: int, port: int, rate: float, seconds: float
) -> tuple[dict[str, float], list[tuple[int, float, str]], float]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    alerts: list[tuple[int, float, str]] = []
    try:
        parts = [TopicPartition(topics.alerts, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        collector = asyncio.create_task(_collect(consumer, alerts))
        produced: dict[str, float] = {}
        took = await _load(bootstrap, topics.input, rate, seconds, produced)
        # Wait until the worker has counted everything, then a little for the last alerts.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if scrape(port).get("meter_events_total", 0) >= len(produced) + 1:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        collector.cancel()
        return produced, alerts, took
    finally:
        await consumer.stop()


def run_latency(
    bootstrap: str, prefix: str, partitions: int, rate: float, seconds: float, workdir: Path
) -> LatencyResult:
    result = LatencyResult(rate=rate, seconds=seconds)
    workdir.mkdir(parents=True, exist_ok=True)
    text, result.limit_calls = policy_text(rate)
    policy = workdir / "policy.yaml"
    policy.write_text(text)
    topics = MeterTopics.named(prefix, f"{prefix}-calls")
    create_topics(bootstrap, [topics.input, topics.alerts], partitions)
    proc, port = start_meter(bootstrap, topics, policy, partitions, workdir)
    try:
        # Warm up: one event counted means the worker joined its group and both agents run.
        asyncio.run(_warm_up(bootstrap, topics.input))
        deadline = time.monotonic() + 120
        while scrape(port).get("meter_events_total", 0) < 1:
            if not proc.alive() or time.monotonic() > deadline:
                result.error = "the worker did not start"
                log.error("latency: %s\n%s", result.error, proc.tail())
                return result
            time.sleep(0.1)
        produced, alerts, took = asyncio.run(
            _measure(bootstrap, topics, partitions, port, rate, seconds)
        )
    finally:
        proc.stop()
    result.produced = len(produced)
    result.achieved_rate = len(produced) / took if took else 0.0
    by_ts = [ts - produced[eid] * 1000 for ts, _, eid in alerts if eid in produced]
    by_seen = [(seen - produced[eid]) * 1000 for _, seen, eid in alerts if eid in produced]
    result.alerts = len(by_ts)
    if by_ts:
        result.p50_ms, result.p99_ms = percentile(by_ts, 50), percentile(by_ts, 99)
        result.max_ms = max(by_ts)
        result.seen_p50_ms, result.seen_p99_ms = percentile(by_seen, 50), percentile(by_seen, 99)
    else:
        result.error = "no alerts measured"
    return result


async def _warm_up(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        value = {"id": "warm-up", "time": int(time.time() * 1000), "app_id": APPS[0][0]}
        await producer.send_and_wait(topic, json.dumps(value).encode(), key=APPS[0][0].encode())
    finally:
        await producer.stop()

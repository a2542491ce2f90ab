"""What the demo shows and reads: its output lines, the alerts as they arrive, the worker's
metrics and the topics it wrote."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from meter.adapters.kafka_security import PLAINTEXT, kafka_python_args
from meter.config import KafkaSecurity


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
    """Reads the alerts topic while the demo runs, printing each alert once as it arrives; once
    `stopping` is set it reads on to the topic's end offsets as of then, and ends."""

    def __init__(
        self, bootstrap: str, topic: str, started: float, security: KafkaSecurity = PLAINTEXT
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.security = security
        self.topic = topic
        self.started = started
        self.alerts: list[dict[str, Any]] = []
        self.first_alert_s: float | None = None
        """Seconds from the demo's start to the first alert on screen."""
        self.stopping = threading.Event()

    def run(self) -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            **kafka_python_args(self.security),
        )
        ends: dict[TopicPartition, int] | None = None
        try:
            tps = assign_from_start(consumer, self.topic)
            while True:
                if self.stopping.is_set() and ends is None:
                    # Stopping: read on to the end offsets as of now, then stop.
                    ends = consumer.end_offsets(tps)
                if ends is not None and all(consumer.position(tp) >= e for tp, e in ends.items()):
                    return
                for records in consumer.poll(timeout_ms=200).values():
                    for r in records:
                        alert = json.loads(r.value)
                        self.alerts.append(alert)
                        out(describe_alert(alert))
                        if self.first_alert_s is None:
                            self.first_alert_s = time.monotonic() - self.started
        finally:
            consumer.close()


def assign_from_start(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    """Assign every partition of `topic` to `consumer`, from the beginning; returns them."""
    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    if not tps:
        raise RuntimeError(f"topic {topic} has no partitions")
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return tps


def read_topic(
    bootstrap: str, topic: str, security: KafkaSecurity = PLAINTEXT, timeout_s: float = 120.0
) -> list[dict[str, Any]]:
    """Every JSON value on `topic` up to its end offsets as of the call.

    It reads to the end offsets rather than until the topic goes quiet: on a loaded machine the
    first fetch alone can take longer than any quiet period, and a reader that stops early would
    report a demo short of records it has."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **kafka_python_args(security)
    )
    values: list[dict[str, Any]] = []
    try:
        tps = assign_from_start(consumer, topic)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                short = {tp.partition: (consumer.position(tp), end) for tp, end in ends.items()}
                raise TimeoutError(f"{topic}: read (position, end) {short} in {timeout_s:.0f}s")
            batch = consumer.poll(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                values.extend(json.loads(r.value) for r in records if r.value is not None)
    finally:
        consumer.close()
    return values


def answers(url: str) -> bool:
    """Whether `url` answers 200 (a readiness check)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our own loopback URL
            return bool(resp.status == 200)
    except OSError:
        return False


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

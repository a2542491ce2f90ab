"""The benchmark's Kafka: a local broker when none is configured, the input topics, and filling
them once with the generated events (one topic of single-event records, one of batch records)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer

from bench.events import Event, encode, encode_batch, generate
from meter.adapters.broker import BrokerLayout, LocalBroker, free_port
from meter.adapters.topics import TopicSpec, ensure_topics

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
KAFKA_HOME = REPO / "deploy" / "kafka"
# Record timestamps are event times in 2022: the input topics must not expire them.
KEEP_FOREVER = {"retention.ms": "-1"}
CHUNK = 20_000


@dataclass
class Kafka:
    """Where the benchmark's broker is; `broker` is set when the benchmark started it."""

    bootstrap: str
    broker: LocalBroker | None = None

    def close(self) -> None:
        if self.broker is not None:
            self.broker.stop()


def connect(state: Path) -> Kafka:
    """METER_KAFKA_BOOTSTRAP when set; otherwise a local broker on free ports, data in `state`."""
    configured = os.environ.get("METER_KAFKA_BOOTSTRAP")
    if configured:
        return Kafka(configured)
    layout = BrokerLayout(
        home=KAFKA_HOME, state=state, port=free_port(), controller_port=free_port()
    )
    broker = LocalBroker(layout)
    broker.start(timeout=120)
    log.info("started a local broker at %s (pid %s)", layout.bootstrap, broker.pid())
    return Kafka(layout.bootstrap, broker)


def kafka_version() -> str:
    jars = sorted((KAFKA_HOME / "lib").glob("kafka_2.13-*.jar"))
    return jars[-1].name.removeprefix("kafka_2.13-").removesuffix(".jar") if jars else "unknown"


def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    ensure_topics(bootstrap, [TopicSpec(n, partitions, KEEP_FOREVER) for n in names])


@dataclass
class Filled:
    events: int
    batch_records: int
    seconds: float


def _chunks(n: int, seed: int) -> Iterator[list[Event]]:
    chunk: list[Event] = []
    for ev in generate(n, seed):
        chunk.append(ev)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def _fill(
    bootstrap: str, single: str, batched: str, n: int, batch: int, partitions: int, seed: int
) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1 << 20
    )
    await producer.start()
    batches = 0
    try:
        for chunk in _chunks(n, seed):
            futures = [
                await producer.send(
                    single,
                    value=encode(ev),
                    key=ev["app_id"].encode(),
                    timestamp_ms=ev["time"],
                )
                for ev in chunk
            ]
            # Batches are cut from the same sequence (CHUNK is a multiple of `batch`), spread
            # round-robin over the partitions.
            for i in range(0, len(chunk), batch):
                part = chunk[i : i + batch]
                futures.append(
                    await producer.send(
                        batched,
                        value=encode_batch(part),
                        partition=batches % partitions,
                        timestamp_ms=part[0]["time"],
                    )
                )
                batches += 1
            await asyncio.gather(*futures)
        await producer.flush()
    finally:
        await producer.stop()
    return batches


async def _fill_single(bootstrap: str, topic: str, events: Iterable[Event]) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1 << 20
    )
    await producer.start()
    n = 0
    try:
        futures = []
        for ev in events:
            key = ev["app_id"].encode()
            futures.append(await producer.send(topic, value=encode(ev), key=key,
                                               timestamp_ms=ev["time"]))  # fmt: skip
            n += 1
            if len(futures) >= CHUNK:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
        await producer.flush()
    finally:
        await producer.stop()
    return n


def fill_single(bootstrap: str, topic: str, events: Iterable[Event]) -> Filled:
    """Produce `events` to `topic`, one per record keyed by app, record timestamp = event time."""
    started = time.monotonic()
    n = asyncio.run(_fill_single(bootstrap, topic, events))
    return Filled(n, 0, time.monotonic() - started)


def fill(
    bootstrap: str,
    single: str,
    batched: str,
    n: int,
    *,
    batch: int = 100,
    partitions: int = 4,
    seed: int = 2022,
) -> Filled:
    """Produce the same `n` events to `single` (one per record, keyed by app, record timestamp =
    event time) and to `batched` (arrays of `batch` events)."""
    assert CHUNK % batch == 0
    started = time.monotonic()
    batches = asyncio.run(_fill(bootstrap, single, batched, n, batch, partitions, seed))
    return Filled(n, batches, time.monotonic() - started)

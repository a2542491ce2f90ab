"""Reading one partition of a topic directly, outside any consumer group: the counter reads back
routed records its consumer skipped, and the outbox checks what already reached an output topic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from meter.adapters.backoff import KAFKA_RETRY
from meter.adapters.kafka_security import aiokafka_args
from meter.config import KafkaSecurity

log = logging.getLogger(__name__)
T = TypeVar("T")


@asynccontextmanager
async def partition_consumer(
    bootstrap: str, topic: str, partition: int, *, security: KafkaSecurity
) -> AsyncIterator[tuple[AIOKafkaConsumer, TopicPartition]]:
    """A started consumer assigned to `topic`/`partition` (no group, nothing committed)."""
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **aiokafka_args(security),
    )
    try:
        await consumer.start()
        consumer.assign([tp])
        yield consumer, tp
    finally:
        await consumer.stop()


async def records(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int
) -> AsyncIterator[ConsumerRecord]:
    """The records at offsets [start, end) that the log still has, in order."""
    consumer.seek(tp, start)
    while await consumer.position(tp) < end:
        batch = await consumer.getmany(tp, timeout_ms=1000, max_records=5000)
        for msg in batch.get(tp, ()):
            if start <= msg.offset < end:
                yield msg


async def read_range(
    bootstrap: str, topic: str, partition: int, start: int, end: int, *, security: KafkaSecurity
) -> list[tuple[int, bytes | None, int | None]]:
    """(offset, value, timestamp ms) of the records at offsets [start, end) of one partition, as
    far as the log still has them."""

    async def attempt() -> list[tuple[int, bytes | None, int | None]]:
        reading = partition_consumer(bootstrap, topic, partition, security=security)
        async with reading as (consumer, tp):
            last = min(end, (await consumer.end_offsets([tp]))[tp])
            found = records(consumer, tp, start, last)
            return [(m.offset, m.value, m.timestamp) async for m in found]

    return await retrying(f"reading {topic}[{partition}] {start}..{end - 1}", attempt)


async def first_offset(
    bootstrap: str, topic: str, partition: int, *, security: KafkaSecurity
) -> int:
    """The offset of the first record one partition still has (its log start offset)."""

    async def attempt() -> int:
        reading = partition_consumer(bootstrap, topic, partition, security=security)
        async with reading as (consumer, tp):
            return int((await consumer.beginning_offsets([tp]))[tp])

    return await retrying(f"reading where {topic}[{partition}] starts", attempt)


READ_ERRORS = (KafkaError, OSError, TimeoutError)


async def retrying(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt()` until it succeeds. A read Kafka fails (it is down, restarting, a leader
    moved) is tried again after a backoff (0.5 s, doubling up to 30 s), never given up: the
    counter cannot go on without it, and the watchdog shows one that waits too long."""
    failures = 0
    while True:
        try:
            return await attempt()
        except READ_ERRORS as exc:
            failures += 1
            delay = KAFKA_RETRY.ceiling(failures - 1)
            if failures == 1 or failures % 10 == 0:
                log.warning("%s failed (%s: %s); trying again in %.1fs (attempt %d)",
                            what, type(exc).__name__, exc, delay, failures)  # fmt: skip
            await asyncio.sleep(delay)

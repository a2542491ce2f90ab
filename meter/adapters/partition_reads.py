"""Reading one partition of a topic directly, outside any consumer group: the counter reads back
routed records its consumer skipped, and the outbox checks what already reached an output topic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord


@asynccontextmanager
async def partition_consumer(
    bootstrap: str, topic: str, partition: int
) -> AsyncIterator[tuple[AIOKafkaConsumer, TopicPartition]]:
    """A started consumer assigned to `topic`/`partition` (no group, nothing committed)."""
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
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
    bootstrap: str, topic: str, partition: int, start: int, end: int
) -> list[tuple[int, bytes | None, int | None]]:
    """(offset, value, timestamp ms) of the records at offsets [start, end) of one partition, as
    far as the log still has them."""
    async with partition_consumer(bootstrap, topic, partition) as (consumer, tp):
        end = min(end, (await consumer.end_offsets([tp]))[tp])
        return [(m.offset, m.value, m.timestamp) async for m in records(consumer, tp, start, end)]

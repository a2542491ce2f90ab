"""Reading routed records by offset, for the counter to apply records its consumer skipped."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition


async def read_range(
    bootstrap: str, topic: str, partition: int, start: int, end: int
) -> list[tuple[int, bytes | None, int | None]]:
    """(offset, value, timestamp ms) of the records at offsets [start, end) of one partition, as
    far as the log still has them."""
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    out: list[tuple[int, bytes | None, int | None]] = []
    try:
        consumer.assign([tp])
        last = (await consumer.end_offsets([tp]))[tp]
        end = min(end, last)
        consumer.seek(tp, start)
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=5000)
            for msg in batch.get(tp, ()):
                if start <= msg.offset < end:
                    out.append((msg.offset, msg.value, msg.timestamp))
        return out
    finally:
        await consumer.stop()

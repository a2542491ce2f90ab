"""Publishing the ledger's outbox (alerts, window totals) exactly once.

A record stays in the state's outbox until its send is acknowledged. After a crash, a record still
in an outbox may or may not have reached its topic: before resending, `already_published` reads
the target partition from the record's own timestamp onwards and looks for its `meter-id` header.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)

ID_HEADER = "meter-id"


async def already_published(
    bootstrap: str, topic: str, partition: int, since_ms: int, ids: Iterable[str]
) -> set[str]:
    """Which of `ids` are on `topic`/`partition` in records timestamped at or after `since_ms`."""
    wanted = set(ids)
    found: set[str] = set()
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        start = (await consumer.offsets_for_times({tp: max(0, since_ms)}))[tp]
        if start is None:
            return found
        consumer.seek(tp, start.offset)
        while wanted - found and await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=5000)
            for msg in batch.get(tp, ()):
                for name, value in msg.headers or ():
                    if name == ID_HEADER:
                        found.add(value.decode())
        return found & wanted
    finally:
        await consumer.stop()

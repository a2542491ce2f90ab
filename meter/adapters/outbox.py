"""Publishing the ledger's outbox (alerts, window totals) exactly once.

A record stays in the state's outbox until its send is acknowledged. After a crash, a record still
in an outbox may or may not have reached its topic: before resending, `already_published` reads
the target partition from the record's own timestamp onwards and looks for its `meter-id` header.
"""

from __future__ import annotations

from collections.abc import Iterable

from meter.adapters.partition_reads import partition_consumer, records, retrying
from meter.config import KafkaSecurity

ID_HEADER = "meter-id"


async def already_published(
    bootstrap: str,
    topic: str,
    partition: int,
    since_ms: int,
    ids: Iterable[str],
    *,
    security: KafkaSecurity,
) -> set[str]:
    """Which of `ids` are on `topic`/`partition` in records timestamped at or after `since_ms`."""
    wanted = set(ids)

    async def attempt() -> set[str]:
        found: set[str] = set()
        reading = partition_consumer(bootstrap, topic, partition, security=security)
        async with reading as (consumer, tp):
            end = (await consumer.end_offsets([tp]))[tp]
            start = (await consumer.offsets_for_times({tp: max(0, since_ms)}))[tp]
            if start is None:
                return found
            async for msg in records(consumer, tp, start.offset, end):
                for name, value in msg.headers or ():
                    if name == ID_HEADER:
                        found.add(value.decode())
                if not wanted - found:
                    break
        return found & wanted

    return await retrying(f"looking for published ids on {topic}[{partition}]", attempt)

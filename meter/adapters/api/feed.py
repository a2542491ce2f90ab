"""Reads the compacted quota feed into a `FeedState`, from the beginning, then follows it.

No consumer group: every API replica reads every partition, so each holds the whole feed and
answers alike, with no routing. It is ready once it has read up to the end offsets it saw at
start: from then on it knows every subject's last state (no warm-up, no cold-start denials).
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

from meter.adapters.kafka_security import PLAINTEXT, aiokafka_args
from meter.config import KafkaSecurity
from meter.core.enforcement import FeedState

log = logging.getLogger(__name__)

POLL_MS = 500


class FeedReader:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        feed: FeedState,
        client_id: str,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self.security = security
        self.bootstrap = bootstrap
        self.topic = topic
        self.feed = feed
        self.client_id = client_id
        self.caught_up = False
        self.waiting_for = "connecting to Kafka"
        self.records = 0
        self.bad_records = 0

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **aiokafka_args(self.security),
        )
        await consumer.start()
        try:
            parts = await self._partitions(consumer)
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            targets = await consumer.end_offsets(parts)
            self.waiting_for = f"reading {self.topic} to its end"
            log.info("reading the quota feed %s (%d partitions)", self.topic, len(parts))
            while True:
                batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=10_000)
                for tp, records in batch.items():
                    for r in records:
                        self._apply(tp.partition, r.key, r.value)
                if not self.caught_up and await self._reached(consumer, targets):
                    self.caught_up = True
                    self.waiting_for = ""
                    log.info("quota feed read: %d keys", len(self.feed))
        finally:
            await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        while True:
            # aiokafka's consumer has no public call for an unsubscribed topic's partitions
            cluster = await consumer._client.fetch_all_metadata()
            ids = cluster.partitions_for_topic(self.topic)
            if ids:
                return [TopicPartition(self.topic, p) for p in sorted(ids)]
            self.waiting_for = f"topic {self.topic} does not exist yet (start a worker)"
            if self.security.sasl:  # a topic this user may not describe looks just the same
                self.waiting_for += f", or user {self.security.username} may not read it (ACLs)"
            await asyncio.sleep(1.0)

    @staticmethod
    async def _reached(consumer: AIOKafkaConsumer, targets: dict[TopicPartition, int]) -> bool:
        for tp, end in targets.items():
            if await consumer.position(tp) < end:
                return False
        return True

    def _apply(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        self.records += 1
        try:
            if key is None:
                raise ValueError("no key")
            decoded = None if value is None else json.loads(value)
            if decoded is not None and not isinstance(decoded, dict):
                raise ValueError("not a JSON object")
            self.feed.apply(key.decode(), decoded, partition)
        except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
            self.bad_records += 1
            log.warning("quota feed: record on partition %d ignored: %s", partition, exc)

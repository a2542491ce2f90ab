"""Reads the compacted quota feed into a `FeedState`, from the beginning, then follows it.

No consumer group: every API replica reads every partition, so each holds the whole feed and
answers alike, with no routing. It is ready once it has read up to the end offsets it saw at
start: from then on it knows every subject's last state (no warm-up, no cold-start denials).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math

from aiokafka import AIOKafkaConsumer, TopicPartition

from meter.adapters.kafka_security import PLAINTEXT, aiokafka_args
from meter.adapters.outages import KafkaLink, probe
from meter.adapters.partition_reads import retrying
from meter.adapters.watchdog import CHECK_INTERVAL_S, ProgressWatchdog, exit_stalled
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
        *,
        stall_timeout_s: float = 120.0,
        stall_exit_s: float = 600.0,
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
        self.positions: dict[int, int] = {}
        """Per partition: the next offset to read."""
        self.targets: dict[TopicPartition, int] | None = None
        """The end offsets at start: read to them, the feed is ready."""
        self._lag = 0
        self.link = KafkaLink(bootstrap)
        self.watchdog = ProgressWatchdog(stall_timeout_s, stall_exit_s or math.inf)

    async def run(self) -> None:
        """Read the feed until cancelled. Kafka trouble never ends it: a consumer that fails is
        replaced after a backoff and resumes where the last one was (`positions`); a probe and
        the progress watchdog report outages and stalls (`trouble`)."""
        watching = [
            asyncio.ensure_future(probe(self.link, self.bootstrap, aiokafka_args(self.security))),
            asyncio.ensure_future(self._watch()),
        ]
        try:
            await retrying(f"reading the quota feed {self.topic}", self._read)
        finally:
            for task in watching:
                task.cancel()
            await asyncio.gather(*watching, return_exceptions=True)

    def trouble(self) -> list[str]:
        """Kafka unreachable, the reader stalled (for `/readyz`)."""
        kafka = self.link.problem()
        return ([kafka] if kafka else []) + self.watchdog.problems()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            position = tuple(sorted(self.positions.items()))
            self.watchdog.observe("feed", position, self._lag, kafka_up=self.link.up is not False)
            stall = self.watchdog.overdue()
            if stall is not None:
                exit_stalled(stall)

    async def _read(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **aiokafka_args(self.security),
        )
        try:
            await consumer.start()
            parts = await self._partitions(consumer)
            consumer.assign(parts)
            for tp in parts:
                if tp.partition in self.positions:  # a consumer that replaces a failed one
                    consumer.seek(tp, self.positions[tp.partition])
                else:
                    await consumer.seek_to_beginning(tp)
            if self.targets is None:
                self.targets = await consumer.end_offsets(parts)
                self.waiting_for = f"reading {self.topic} to its end"
                log.info("reading the quota feed %s (%d partitions)", self.topic, len(parts))
            while True:
                batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=10_000)
                for tp, records in batch.items():
                    for r in records:
                        self._apply(tp.partition, r.key, r.value)
                    if records:
                        self.positions[tp.partition] = records[-1].offset + 1
                self._lag = self._lag_of(consumer, parts)
                if not self.caught_up and await self._reached(consumer, self.targets):
                    self.caught_up = True
                    self.waiting_for = ""
                    log.info("quota feed read: %d keys", len(self.feed))
        finally:
            await consumer.stop()

    def _lag_of(self, consumer: AIOKafkaConsumer, parts: list[TopicPartition]) -> int:
        lag = 0
        for tp in parts:
            high = consumer.highwater(tp)
            if high is not None:
                lag += max(0, high - self.positions.get(tp.partition, 0))
        return lag

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

"""The delivery loop of one sink: its own consumer group on the alerts topic, a bounded batch of
alerts in flight, each retried with exponential backoff and jitter, offsets committed only once
every alert of the batch is delivered (or rejected for good).

A sink that is down lags on its own group; counting is unaffected; a restart resumes from the
last commit (at least once: receivers deduplicate on the alert id).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from meter.adapters.backoff import Backoff
from meter.adapters.kafka_security import PLAINTEXT, aiokafka_args
from meter.adapters.sinks.errors import PermanentError, RetryableError
from meter.adapters.sinks.metrics import DELIVERED, REJECTED, RETRIED, SinkMetrics
from meter.adapters.sinks.records import AlertRecord, decode_alert
from meter.adapters.sinks.settings import LATEST, SINCE, StartPosition
from meter.adapters.topics import partition_counts
from meter.config import KafkaSecurity

log = logging.getLogger(__name__)

# A sink may retry one batch for hours; leaving the group then would only hand the partitions to
# another process that cannot deliver either, and re-deliver what this one finally sent.
MAX_POLL_INTERVAL_MS = 86_400_000
WARN_EVERY = 10  # attempts: the first failure and every tenth after it are logged at WARNING


class Sink(Protocol):
    """Something alerts are delivered to. `deliver` returns once the receiver has the alert,
    or raises `RetryableError` (try again later) or `PermanentError` (skip it)."""

    name: str

    async def deliver(self, alert: AlertRecord) -> None: ...


class _StopRequestedError(Exception):
    """The loop was asked to stop while a batch was still being retried."""


class _StartPosition(ConsumerRebalanceListener):  # type: ignore[misc]
    """Applies `--sink-start` to partitions the group has never committed; others resume."""

    def __init__(self, start: StartPosition, group_id: str, clock: Callable[[], float]) -> None:
        self.start = start
        self.group_id = group_id
        self.clock = clock
        self.consumer: Any = None

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self.start.mode not in {LATEST, SINCE} or self.consumer is None or not assigned:
            return  # earliest is the consumer's own auto_offset_reset
        consumer = self.consumer
        # The fetcher starts at once (from the earliest offset): hold the partitions until
        # their start is decided, so that nothing before it is handed out.
        consumer.pause(*assigned)
        try:
            for tp in sorted(assigned):
                if await consumer.committed(tp) is not None:
                    continue
                offset: int | None = None
                if self.start.mode == SINCE:
                    since = max(0, int(self.clock() * 1000) - self.start.lookback_ms)
                    found = (await consumer.offsets_for_times({tp: since}))[tp]
                    offset = None if found is None else found.offset
                if offset is None:
                    offset = (await consumer.end_offsets([tp]))[tp]
                consumer.seek(tp, offset)
                log.info(
                    "%s: %s starts at offset %d (--sink-start %s)",
                    self.group_id,
                    tp,
                    offset,
                    self.start,
                )
        finally:
            consumer.resume(*assigned)


class DeliveryLoop:
    """Delivers every alert of `topic` to `sink`, as consumer group `<group>-sink-<sink name>`."""

    def __init__(
        self,
        sink: Sink,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        metrics: SinkMetrics,
        backoff: Backoff,
        batch: int = 100,
        start: StartPosition | None = None,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
        poll_ms: int = 500,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self.sink = sink
        self.bootstrap = bootstrap
        self.security = security
        self.topic = topic
        self.group_id = f"{group}-sink-{sink.name}"
        self.metrics = metrics
        self.backoff = backoff
        self.batch = batch
        self.start = start or StartPosition()
        self.rand = rand
        self.clock = clock
        self.poll_ms = poll_ms
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish (or abandon, uncommitted) the batch in flight, then return from `run`."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        listener = _StartPosition(self.start, self.group_id, self.clock)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            client_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
            **aiokafka_args(self.security),
        )
        listener.consumer = consumer
        consumer.subscribe([self.topic], listener=listener)
        try:
            await consumer.start()
            log.info(
                "sink %s: delivering alerts from %s as group %s",
                self.sink.name,
                self.topic,
                self.group_id,
            )
            while not self.stopping:
                fetched = await consumer.getmany(timeout_ms=self.poll_ms, max_records=self.batch)
                records = [r for part in fetched.values() for r in part]
                await self._report_lag(consumer, len(records))
                if not records:
                    continue
                try:
                    await self.deliver_batch(records)
                except _StopRequestedError:
                    log.info(
                        "sink %s: stopped with %d alert(s) uncommitted",
                        self.sink.name,
                        len(records),
                    )
                    return
                await self._commit(
                    consumer, {tp: part[-1].offset + 1 for tp, part in fetched.items()}
                )
                await self._report_lag(consumer, 0)
        finally:
            await consumer.stop()

    async def deliver_batch(self, records: list[Any]) -> None:
        """Deliver each record (concurrently); return when none is left to retry."""
        try:
            async with asyncio.TaskGroup() as tasks:
                for record in records:
                    tasks.create_task(self.deliver_record(record))
        except* _StopRequestedError:
            raise _StopRequestedError from None

    async def deliver_record(self, record: Any) -> None:
        try:
            alert = decode_alert(
                record.value,
                list(record.headers or ()),
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                timestamp_ms=record.timestamp,
            )
        except PermanentError as exc:
            where = f"{record.topic}[{record.partition}]@{record.offset}"
            log.error("sink %s: skipping the record at %s: %s", self.sink.name, where, exc)
            self.metrics.count(self.sink.name, REJECTED)
            return
        await self.deliver(alert)

    async def deliver(self, alert: AlertRecord) -> None:
        """Deliver one alert, retrying until it is delivered or rejected for good."""
        name = self.sink.name
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                await self.sink.deliver(alert)
            except RetryableError as exc:
                retry_after = exc.retry_after
                reason = str(exc)
            except PermanentError as exc:
                log.error(
                    "sink %s: alert %s (%s) rejected, not retried: %s",
                    name,
                    alert.id,
                    alert.where,
                    exc,
                )
                self.metrics.count(name, REJECTED)
                return
            except Exception as exc:  # a bug in a sink must not lose the alert either
                log.exception("sink %s: alert %s: unexpected error", name, alert.id)
                reason = repr(exc)
            else:
                self.metrics.count(name, DELIVERED)
                if attempt:
                    log.info(
                        "sink %s: alert %s delivered after %d retries", name, alert.id, attempt
                    )
                return
            self.metrics.count(name, RETRIED)
            if self.stopping:
                raise _StopRequestedError
            delay = self.backoff.delay(attempt, self.rand, retry_after)
            log.log(
                logging.WARNING if attempt % WARN_EVERY == 0 else logging.DEBUG,
                "sink %s: alert %s not delivered (attempt %d): %s; retrying in %.2fs",
                name,
                alert.id,
                attempt + 1,
                reason,
                delay,
            )
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                attempt += 1
                continue
            raise _StopRequestedError

    async def _commit(self, consumer: Any, offsets: dict[TopicPartition, int]) -> None:
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # Delivered but not committed (a rebalance moved the partitions): the new owner
            # delivers these alerts again; receivers deduplicate on the id.
            log.warning("sink %s: commit of delivered alerts failed: %r", self.sink.name, exc)

    async def _report_lag(self, consumer: Any, in_flight: int) -> None:
        behind = in_flight
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                behind += max(0, high - await consumer.position(tp))
        self.metrics.lag.labels(self.sink.name).set(behind)


async def read_alerts_since(
    bootstrap: str,
    topic: str,
    since_ms: int,
    keep: Callable[[AlertRecord], bool] = lambda _: True,
    *,
    security: KafkaSecurity = PLAINTEXT,
) -> list[AlertRecord]:
    """The valid alerts on `topic` with a timestamp at or after `since_ms`, up to the current end,
    that `keep` accepts (no consumer group: used to rebuild a sink's state at start)."""
    counts = await asyncio.to_thread(partition_counts, bootstrap, [topic], security=security)
    count = counts.get(topic, 0)
    parts = [TopicPartition(topic, p) for p in range(count)]
    out: list[AlertRecord] = []
    if not parts:
        return out
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **aiokafka_args(security)
    )
    try:
        await consumer.start()
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        starts = await consumer.offsets_for_times({tp: max(0, since_ms) for tp in parts})
        todo = []
        for tp in parts:
            found = starts[tp]
            if found is not None and found.offset < ends[tp]:
                consumer.seek(tp, found.offset)
                todo.append(tp)
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=1000, max_records=5000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset >= ends[tp]:
                        continue
                    try:
                        alert = decode_alert(
                            r.value,
                            list(r.headers or ()),
                            topic=r.topic,
                            partition=r.partition,
                            offset=r.offset,
                            timestamp_ms=r.timestamp,
                        )
                    except PermanentError:
                        continue
                    if keep(alert):
                        out.append(alert)
            todo = [tp for tp in todo if await consumer.position(tp) < ends[tp]]
        return out
    finally:
        await consumer.stop()


__all__ = ["Backoff", "DeliveryLoop", "Sink", "read_alerts_since"]

"""Stage 1, the router: decode input records, dead-letter the bad parts, send the valid events to
the routed partition of their organisation (one routed record per routed partition per batch,
however many organisations share it), and report event-time progress to every routed partition.

The router is a plain aiokafka consumer in its own group (`<group>-router`), not a faust agent:
faust's offset bookkeeping can commit past records it dropped from its buffers during a
rebalance, which lost input records in chaos runs. Here the rule is simple and local: a batch's
routed and dead-letter records are acknowledged by Kafka before the batch's input offsets are
committed, and a rebalance waits for the batch in hand. A batch cut short by a crash is routed
again by the next owner; the counter recognises the repeats by event id.

After the events it covers, the router sends each routed partition a progress report on every
input partition it reads (`meter.adapters.sources`), at most every `REPORT_MS` after a batch and
every `--tick` when nothing moves: the counters close windows on the minimum over all input
partitions, so no partition read first can make the others' events late.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    RebalanceInProgressError,
)
from aiokafka.structs import ConsumerRecord
from faust.exceptions import ProducerSendError

from meter.adapters.backoff import KAFKA_RETRY
from meter.adapters.kafka_security import aiokafka_args
from meter.adapters.sources import SourceTracker
from meter.adapters.telemetry import Telemetry
from meter.adapters.wire import (
    dead_letter,
    encode_report,
    encode_routed_chunks,
    ingest_time,
    routed_partition,
)
from meter.core.events import ApiCall, Rejection, decode_record
from meter.core.policy import Policy
from meter.worker_settings import WorkerSettings

log = logging.getLogger(__name__)

ROUTE_BATCH = 5000
"""Input records per batch (one poll): each batch becomes one routed record per routed partition."""
MAX_ROUTED_EVENTS = 5000
POLL_MS = 50
REPORT_MS = 200
"""Progress reports follow batches at most this often (ms)."""

Send = Callable[..., Any]
"""`send(topic, key=, value=, headers=, partition=)` returning an awaitable that resolves once
Kafka has the record."""


Route = tuple[str, str | None]
"""A routing key and the subject level the event counts for there (None: both)."""


def routes(policy: Policy, event: ApiCall) -> tuple[Route, ...]:
    """All events of one organisation meet on one partition: org totals need one owner. An app
    the policy does not know may claim different organisations: its app totals are counted on the
    app's partition and its org totals on the claimed organisation's (`meter.core.ledger`)."""
    org = policy.org_of(event.app_id, event.org_id)
    if org is None:
        return ((f"app:{event.app_id}", None),)
    if policy.known_app(event.app_id):
        return ((f"org:{org}", None),)
    return ((f"app:{event.app_id}", "app"), (f"org:{org}", "org"))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """A rebalance waits until the batch in hand is routed and committed."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        async with self.router.lock:
            # Reports are sent at most every REPORT_MS, so the progress of the last batches may
            # not have gone out yet. It goes out now: the next owner of these partitions starts
            # with no progress (it routes only what comes after), and the counters keep the
            # newest progress they were told; unsent, it would hold back the watermarks until
            # the partitions turn idle.
            consumer = self.router.consumer
            if revoked and consumer is not None:
                await asyncio.gather(*await self.router._report(consumer))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        log.info("router: input partitions %s", sorted(tp.partition for tp in assigned))
        self.router.sources.assigned((tp.partition for tp in assigned), time.monotonic())


class Router:
    """Consumes the input topic in group `<group>-router` and routes it (see the module doc)."""

    def __init__(
        self,
        settings: WorkerSettings,
        policy: Policy,
        bootstrap: str,
        telemetry: Telemetry,
        send: Send,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.bootstrap = bootstrap
        self.telemetry = telemetry
        self.send = send
        self.clock = clock
        self.consumer: AIOKafkaConsumer | None = None
        self.positions: dict[int, int] = {}
        """Per input partition: the next offset to route (for the lag gauge)."""
        self.lock = asyncio.Lock()
        self.sources = SourceTracker(
            settings.idle_timeout_ms / 1000, max(settings.grace_ms, ALIGN_MIN_DRIFT_MS)
        )
        self._reported_s = 0.0
        self._last_lag = 0

    def lag(self) -> dict[int, int]:
        """Per assigned input partition: records not yet routed (best effort, for metrics)."""
        consumer = self.consumer
        if consumer is None:
            return {}
        out = {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                out[tp.partition] = max(0, high - self.positions.get(tp.partition, 0))
        return out

    def consumer_settings(self) -> dict[str, Any]:
        s = self.settings
        return {
            "bootstrap_servers": self.bootstrap,
            **aiokafka_args(s.kafka_security),
            "group_id": s.router_group,
            "client_id": f"meter-router-{s.web_host}:{s.web_port}",
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "isolation_level": "read_committed",
            "max_poll_records": ROUTE_BATCH,
            "session_timeout_ms": s.session_timeout_ms,
            "heartbeat_interval_ms": s.heartbeat_interval_ms,
        }

    async def run(self) -> None:
        """Route until cancelled. A Kafka consumer that fails (it cannot bootstrap, or its group
        coordination died: aiokafka then fails every call) is replaced by a new one after a
        backoff. Nothing of the batch in hand was committed: the new consumer routes it again
        from the last commit, and the counter drops the repeats by event id. Other errors (bugs)
        propagate: the worker exits (`meter.adapters.app.die`)."""
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await self._consume()
            except RECOVERABLE as exc:
                if time.monotonic() - started > HEALTHY_S:
                    failures = 0
                failures += 1
                delay = KAFKA_RETRY.delay(failures, random.random)  # jitter: not in step
                level = logging.WARNING if failures == 1 or failures % 10 == 0 else logging.DEBUG
                log.log(level, "router: Kafka consumer failed (%s); a new one starts in %.1fs "
                        "(attempt %d); the batch in hand is routed again", _brief(exc), delay,
                        failures)  # fmt: skip
                await asyncio.sleep(delay)
                continue
            return

    def progress(self) -> tuple[tuple[tuple[int, int], ...], int]:
        """For the watchdog: the committed input positions and the records waiting (the last
        known figure while the consumer is being replaced)."""
        if self.consumer is not None:
            self._last_lag = sum(self.lag().values())
        return tuple(sorted(self.positions.items())), self._last_lag

    async def _consume(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(**self.consumer_settings())
        try:
            await consumer.start()
        except BaseException:
            await _stop(consumer)
            raise
        self.consumer = consumer
        heartbeat = asyncio.ensure_future(self._heartbeat(consumer))
        try:
            consumer.subscribe([s.input_topic], listener=_Rebalance(self))
            while True:
                if heartbeat.done():
                    heartbeat.result()  # it failed: so does the router (never silently)
                batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=ROUTE_BATCH)
                if not batch:
                    # A partition paused as ahead waits for the slower ones, which may have been
                    # read to their end since (the heartbeat's reports say so): re-evaluated at
                    # every poll, or nothing would resume it (seen: a demo stalled for good).
                    self._align(consumer)
                    continue
                async with self.lock:
                    # Any failure propagates: nothing of this batch is committed.
                    pending = await self._route(batch)
                    if time.monotonic() - self._reported_s >= REPORT_MS / 1000:
                        pending += await self._report(consumer)
                    await asyncio.gather(*pending)
                    self.telemetry.routed(sum(len(r) for r in batch.values()))
                    await self._commit(consumer, batch)
                    self._align(consumer)
        finally:
            heartbeat.cancel()
            self.consumer = None
            await _stop(consumer)

    async def _heartbeat(self, consumer: AIOKafkaConsumer) -> None:
        """Progress reports while no batch comes: idle partitions are reported as idle."""
        interval = self.settings.tick_ms / 1000
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - self._reported_s < interval:
                continue
            async with self.lock:
                await asyncio.gather(*await self._report(consumer))

    async def _report(self, consumer: AIOKafkaConsumer) -> list[Any]:
        """Send every routed partition the progress of the input partitions read here; returns
        the sends' futures."""
        s = self.settings
        now_s = time.monotonic()
        self._reported_s = now_s
        assignment = [tp for tp in consumer.assignment() if tp.topic == s.input_topic]
        if not assignment:
            return []
        self.sources.positions({tp.partition: _caught_up(consumer, tp) for tp in assignment})
        partitions = len(consumer.partitions_for_topic(s.input_topic) or ()) or len(assignment)
        report = self.sources.report(partitions, int(self.clock() * 1000), now_s)
        value = encode_report(report)
        return [
            await self.send(s.routed_topic, key=None, value=value, partition=r)
            for r in range(s.partitions)
        ]

    def _align(self, consumer: AIOKafkaConsumer) -> None:
        pause, resume = self.sources.ahead(time.monotonic())
        topic = self.settings.input_topic
        assigned = {tp.partition for tp in consumer.assignment()}
        paused = {tp.partition for tp in consumer.paused()}
        if pause - paused:
            log.debug("router: pausing input partitions %s (ahead in event time)", pause)
        consumer.pause(*(TopicPartition(topic, p) for p in pause & assigned))
        consumer.resume(*(TopicPartition(topic, p) for p in resume & paused & assigned))

    async def _commit(
        self, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, RebalanceInProgressError, IllegalStateError) as exc:
            # The partitions moved on while this batch was routed: the new owner routes it again
            # from the last commit, and the counter drops the repeats by id.
            log.warning("router: commit skipped (%s); the batch will be routed again", exc)
            return
        for tp, offset in offsets.items():
            self.positions[tp.partition] = offset

    async def _route(self, batch: Mapping[TopicPartition, list[ConsumerRecord]]) -> list[Any]:
        """Hand the batch's routed and dead-letter records to the producer; returns the sends'
        futures."""
        s = self.settings
        now_ms = int(self.clock() * 1000)
        now_s = time.monotonic()
        skew = s.max_future_skew_ms
        newest_ingest = 0
        partitions = s.partitions
        partition_of: dict[str, int] = {}
        by_partition: dict[int, tuple[list[ApiCall], list[str | None]]] = {}
        pending = []
        progress: dict[int, int] = {}  # input partition -> newest event time (capped at arrival)
        for tp, records in batch.items():
            newest: int | None = None
            for msg in records:
                ingest_ms = ingest_time(msg.timestamp, now_ms)
                newest_ingest = max(newest_ingest, ingest_ms)
                decoded = decode_record(msg.value, list(msg.headers or ()), ingest_ms + skew)
                if decoded.rejections:
                    pending.append(await self._dead_letter(msg, decoded.rejections))
                for ev in decoded.events:
                    t = ev.time_ms if ev.time_ms < ingest_ms else ingest_ms
                    if newest is None or t > newest:
                        newest = t
                    for key, level in routes(self.policy, ev):
                        p = partition_of.get(key)
                        if p is None:
                            p = partition_of[key] = routed_partition(key, partitions)
                        held = by_partition.get(p)
                        if held is None:
                            held = by_partition[p] = ([], [])
                        held[0].append(ev)
                        held[1].append(level)
            if newest is not None:
                progress[tp.partition] = newest
        # One routed record per routed partition per batch, whatever the number of subjects in
        # it: the counter's cost is per record. A subject's partition is its routing key's, as
        # Kafka's default partitioner places it.
        for p, (events, levels) in by_partition.items():
            for i in range(0, len(events), MAX_ROUTED_EVENTS):
                j = i + MAX_ROUTED_EVENTS
                for value in encode_routed_chunks(events[i:j], newest_ingest, levels[i:j]):
                    pending.append(
                        await self.send(s.routed_topic, key=None, value=value, partition=p)
                    )
        for partition, newest in progress.items():
            self.sources.routed(partition, newest, now_s)
        return pending

    async def _dead_letter(self, msg: ConsumerRecord, rejections: list[Rejection]) -> Any:
        """Send the original record to the dead-letter topic; returns the send's future."""
        first = rejections[0]
        log.warning(
            "dead-lettered %d part(s) of %s[%d]@%d: %s (%s)",
            len(rejections),
            msg.topic,
            msg.partition,
            msg.offset,
            first.reason,
            first.detail,
        )
        self.telemetry.rejected(rejections)
        letter = dead_letter(msg.value, rejections, msg.topic, msg.partition, msg.offset)
        return await self.send(
            self.settings.dlq_topic, key=letter.key, value=letter.value, headers=letter.headers
        )


RECOVERABLE = (KafkaError, ProducerSendError, OSError, TimeoutError)
"""Failures of the Kafka clients: the router replaces its consumer and carries on."""
HEALTHY_S = 60.0
"""A consumer that worked this long before failing starts the backoff afresh."""
STOP_TIMEOUT_S = 10.0


def _brief(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:197] + "..."


async def _stop(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer without waiting long for a broker that is gone (leaving the group)."""
    try:
        await asyncio.wait_for(consumer.stop(), STOP_TIMEOUT_S)
    except (KafkaError, OSError, TimeoutError) as exc:
        log.debug("router: consumer stop: %r", exc)


ALIGN_MIN_DRIFT_MS = 15 * 60_000
"""Catch-up alignment lets partitions run apart by the grace, and never less than this."""


def _caught_up(consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
    """Whether everything up to the partition's (last stable) end has been fetched and routed."""
    end = consumer.last_stable_offset(tp)
    if end is None or end < 0:
        end = consumer.highwater(tp)
    if end is None:
        return False
    try:  # aiokafka keeps the fetch position per partition; no public synchronous getter
        state = consumer._subscription.subscription.assignment.state_value(tp)
        return bool(state.has_valid_position and state.position >= end)
    except (AttributeError, KeyError, TypeError):
        return False

"""The faust worker: two agents wired to Kafka topics and a changelog-backed table.

`route` decodes input records, dead-letters the bad parts and re-keys the valid events by
organisation onto the routed topic; `count` folds routed records into each partition's
`PartitionLedger` (state in a faust table: RocksDB plus a changelog) and publishes its outbox.
faust's windowed tables are not used: window logic lives in the core.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

import faust
from faust.streams import _current_event
from faust.transport.drivers.aiokafka import Producer as AIOKafkaProducer
from faust.types import TP

from meter.adapters.outbox import ID_HEADER, already_published
from meter.adapters.telemetry import Telemetry
from meter.adapters.wire import TICK, decode_routed, dlq_headers, encode_routed
from meter.config import WorkerSettings
from meter.core.events import ApiCall, Rejection, decode_record
from meter.core.ledger import LedgerSettings, PartitionLedger, Pending
from meter.core.outputs import ALERTS, Json
from meter.core.policy import Policy

log = logging.getLogger(__name__)


class TableStore:
    """The ledger's `Store` over a faust table (bytes keys, compact JSON values)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, key: str) -> Json | None:
        raw = self.table.get(key.encode())
        if raw is None:
            return None
        value: Json = json.loads(raw)
        return value

    def put(self, key: str, value: Json) -> None:
        self.table[key.encode()] = json.dumps(value, separators=(",", ":")).encode()

    def delete(self, key: str) -> None:
        self.table.pop(key.encode(), None)

    def items(self) -> Iterator[tuple[str, Json]]:
        for key, raw in self.table.items():
            if raw is not None:
                yield (key.decode() if isinstance(key, bytes) else str(key)), json.loads(raw)


ROUTE_BATCH = 2000
COUNT_BATCH = 2000
MAX_ROUTED_EVENTS = 5000
BATCH_WAIT_S = 0.02
EXIT_PIPELINE_FAILURE = 70


class IdempotentProducer(AIOKafkaProducer):
    """faust turns producer idempotence on only in its exactly-once mode (which has open bugs).
    Without it, a retried send whose first attempt did reach the broker writes the record twice:
    an alert or window record published twice. The broker drops such retries when it is on."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class MeterApp(faust.App):
    def _new_producer(self) -> Any:
        return IdempotentProducer(self.transport, loop=self.loop, beacon=self.beacon)


def _die(stage: str, exc: BaseException) -> NoReturn:
    """faust would restart a crashed agent past the failing batch, and acks it on the way out:
    counts lost. Bad input never raises (it is dead-lettered), so this is a bug or an outage:
    exit at once, without committing; a restart resumes from the last committed offsets."""
    log.critical("stopping the worker: %s failed: %r", stage, exc, exc_info=exc)
    logging.shutdown()
    os._exit(EXIT_PIPELINE_FAILURE)


def header_pairs(headers: Any) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def ingest_time(timestamp_s: float | None, now_ms: int) -> int:
    """When an input record reached Kafka (its timestamp), never later than now: a producer
    with a clock running ahead must not make the dedup memory forget ids early."""
    if not timestamp_s or timestamp_s < 0:
        return now_ms
    return min(int(timestamp_s * 1000), now_ms)


def routing_key(policy: Policy, event: ApiCall) -> str:
    """All events of one organisation meet on one partition: org totals need one owner."""
    org = policy.org_of(event.app_id, event.org_id)
    return f"org:{org}" if org is not None else f"app:{event.app_id}"


class MeterWorker:
    """Builds the faust app for `settings` and `policy`; `app` is what `faust.Worker` runs."""

    def __init__(
        self,
        settings: WorkerSettings,
        policy: Policy,
        bootstrap: str,
        telemetry: Telemetry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.bootstrap = bootstrap
        self.telemetry = telemetry
        self.clock = clock
        self.ledger_settings = LedgerSettings(
            grace_ms=settings.grace_ms,
            dedup_horizon_ms=settings.dedup_horizon_ms,
            late_horizon_ms=settings.late_horizon_ms,
        )
        self.ledgers: dict[int, PartitionLedger] = {}
        self.unsent: dict[int, list[Pending]] = {}
        self.out_partitions: dict[str, int] = {}
        self.app = self._build()

    # -- wiring --------------------------------------------------------------------------------
    def _build(self) -> faust.App:
        s = self.settings
        app = MeterApp(
            s.group,
            broker=f"kafka://{self.bootstrap}",
            store="rocksdb://" if s.store == "rocksdb" else "memory://",
            datadir=str(s.data_dir),
            topic_partitions=s.partitions,
            topic_allow_declare=False,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            web_enabled=True,
            web_bind=s.web_host,
            web_host=s.web_host,
            web_port=s.web_port,
            web_in_thread=False,
            table_cleanup_interval=3600.0,
            key_serializer="raw",
            value_serializer="raw",
        )

        def raw_topic(name: str, **extra: Any) -> faust.TopicT:
            return app.topic(name, key_serializer="raw", value_serializer="raw", **extra)

        self.source = raw_topic(s.input_topic, allow_empty=True)
        self.routed = raw_topic(s.routed_topic, partitions=s.partitions)
        self.dlq = raw_topic(s.dlq_topic)
        self.alerts = raw_topic(s.alerts_topic)
        self.windows = raw_topic(s.windows_topic)
        self.table = app.Table(
            "ledger",
            default=None,
            partitions=s.partitions,
            key_type=bytes,
            value_type=bytes,
        )
        self.store = TableStore(self.table)
        app.agent(self.source, name="route")(self._route)
        app.agent(self.routed, name="count")(self._count)
        app.timer(s.tick_ms / 1000)(self._tick)
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        self.telemetry.install(app, self)
        return app

    async def _on_revoked(self, sender: Any, revoked: set[TP], **_: Any) -> None:
        # State of a revoked partition may change elsewhere: rebuild from the table when it returns.
        for tp in revoked:
            if tp.topic == self.settings.routed_topic:
                self.ledgers.pop(tp.partition, None)
                self.unsent.pop(tp.partition, None)

    # -- stage 1: decode, dead-letter, re-key --------------------------------------------------
    async def _route(self, stream: Any) -> None:
        async for batch in stream.take_events(ROUTE_BATCH, within=BATCH_WAIT_S):
            try:
                by_key: dict[str, list[ApiCall]] = {}
                now_ms = int(self.clock() * 1000)
                ingest_ms = 0
                for event in batch:
                    msg = event.message
                    ingest_ms = max(ingest_ms, ingest_time(msg.timestamp, now_ms))
                    decoded = decode_record(msg.value, header_pairs(msg.headers))
                    if decoded.rejections:
                        self._dead_letter(msg, decoded.rejections)
                    for ev in decoded.events:
                        by_key.setdefault(routing_key(self.policy, ev), []).append(ev)
                # One routed record per organisation per batch: the counter's cost is per record.
                for key, events in by_key.items():
                    for i in range(0, len(events), MAX_ROUTED_EVENTS):
                        chunk = events[i : i + MAX_ROUTED_EVENTS]
                        await self.routed.send(
                            key=key.encode(), value=encode_routed(chunk, ingest_ms)
                        )
            except Exception as exc:
                _die("route", exc)

    def _dead_letter(self, msg: Any, rejections: list[Rejection]) -> None:
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
        self.dlq.send_soon(
            key=f"{msg.topic}:{msg.partition}:{msg.offset}".encode(),
            value=msg.value,
            headers=dlq_headers(rejections, msg.topic, msg.partition, msg.offset),
        )

    # -- stage 2: count ------------------------------------------------------------------------
    async def _count(self, stream: Any) -> None:
        async for batch in stream.take_events(COUNT_BATCH, within=BATCH_WAIT_S):
            try:
                by_partition: dict[int, list[Any]] = {}
                for event in batch:
                    by_partition.setdefault(event.message.partition, []).append(event)
                for partition, events in by_partition.items():
                    await self._count_partition(stream, partition, events)
            except Exception as exc:
                _die("count", exc)

    async def _count_partition(self, stream: Any, partition: int, events: list[Any]) -> None:
        ledger = self.ledgers.get(partition)
        if ledger is None:
            ledger = await self._bootstrap(partition)
        if self.ledgers.get(partition) is not ledger:
            return  # revoked while bootstrapping: the new owner replays these events
        # faust's table reads and writes go to the partition of the current event: make it this
        # one, for this task only. (Stream._set_current_event would also overwrite the stream's
        # own current_event, which take_events' background filler reads: events got swapped.)
        _current_event.set(weakref.ref(events[-1]))
        now_ms = int(self.clock() * 1000)
        for event in events:
            msg = event.message
            routed = decode_routed(msg.value or TICK)
            if routed is None:
                continue
            calls = routed.events
            ingest_ms = routed.ingest_ms
            if ingest_ms is None:
                ingest_ms = ingest_time(msg.timestamp, now_ms)
            started = time.perf_counter()
            applied = ledger.apply(msg.offset, calls, now_ms, ingest_ms)
            self.telemetry.applied(applied.stats, len(calls), time.perf_counter() - started)
            if applied.outbox:
                self.unsent.setdefault(partition, []).extend(applied.outbox)
        ledger.flush()
        if self.unsent.get(partition):
            await self._publish(partition, ledger)

    async def _bootstrap(self, partition: int) -> PartitionLedger:
        ledger = PartitionLedger(partition, self.policy, self.ledger_settings, self.store)
        pending = ledger.bootstrap(self.store.items())
        if pending:
            log.info("partition %d: %d outbox record(s) to reconcile", partition, len(pending))
            published = await self._published_ids(partition, pending)
            ledger.acknowledge([p for p in pending if p.record.id in published])
            remaining = [p for p in pending if p.record.id not in published]
            if remaining:
                self.unsent[partition] = remaining
        self.ledgers[partition] = ledger
        return ledger

    async def _published_ids(self, partition: int, pending: list[Pending]) -> set[str]:
        """Ids of the pending records that already reached their topic before a crash."""
        by_target: dict[tuple[str, int], list[Pending]] = {}
        for p in pending:
            topic = self._topic_name(p.record.kind)
            by_target.setdefault((topic, self._out_partition(topic, partition)), []).append(p)
        found: set[str] = set()
        for (topic, part), items in by_target.items():
            since = min(p.record.ts_ms for p in items) - 1000
            found |= await already_published(
                self.bootstrap, topic, part, since, (p.record.id for p in items)
            )
        return found

    def _topic_name(self, kind: str) -> str:
        return self.settings.alerts_topic if kind == ALERTS else self.settings.windows_topic

    def _out_partition(self, topic: str, partition: int) -> int:
        # Outputs of ledger partition p go to partition p of the output topic (mod its size),
        # so that reconciliation after a crash reads one partition from a known time.
        return partition % self.out_partitions.get(topic, 1)

    async def _publish(self, partition: int, ledger: PartitionLedger) -> None:
        batch = self.unsent.pop(partition, [])
        # The state that holds these records in its outbox must be in the changelog before they
        # are published: otherwise a crash could leave them published and the state without
        # them, and a new owner (restored from the changelog) would publish them again.
        await self.app.producer.flush()
        futures = []
        for p in batch:
            topic = self.alerts if p.record.kind == ALERTS else self.windows
            name = self._topic_name(p.record.kind)
            futures.append(
                await topic.send(
                    key=p.record.key.encode(),
                    value=json.dumps(p.record.value, separators=(",", ":")).encode(),
                    partition=self._out_partition(name, partition),
                    timestamp=p.record.ts_ms / 1000,
                    headers=[(ID_HEADER, p.record.id.encode())],
                )
            )
        results = await asyncio.gather(*futures, return_exceptions=True)
        sent: list[Pending] = []
        failed: list[Pending] = []
        for p, result in zip(batch, results, strict=True):
            (failed if isinstance(result, BaseException) else sent).append(p)
        if failed:
            log.error(
                "partition %d: %d output record(s) not sent; will retry", partition, len(failed)
            )
            self.unsent[partition] = failed
        ledger.acknowledge(sent)
        self.telemetry.published(sent)

    async def _tick(self) -> None:
        """Control records let idle partitions reconcile their outbox inside the stream, where
        table writes are allowed (faust forbids them in timers)."""
        for partition in range(self.settings.partitions):
            await self.routed.send(key=None, value=TICK, partition=partition)

"""The worker: the router (stage 1) and the faust app that counts (stage 2).

The router (`meter.adapters.router`) decodes input records, dead-letters the bad parts and re-keys
the valid events by organisation onto the routed topic. The faust agent `count` folds each routed
record into its partition's `PartitionLedger` (state in a faust table: RocksDB plus a changelog)
and publishes the outbox. faust's windowed tables are not used: window logic lives in the core.

faust's consumer can drop records from its buffers in a rebalance and still commit past them. The
routed topic's offsets are contiguous (it is written without transactions, so it holds no control
records), so the ledger remembers the last offset it saw: a record further on than the next one
reveals records faust skipped, and the counter reads those itself, by offset, before it goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

import faust
from faust.transport.drivers.aiokafka import Producer as AIOKafkaProducer
from faust.types import TP

from meter.adapters.changelog import ChangelogTracker, LedgerTable, tracker_of
from meter.adapters.outbox import ID_HEADER, already_published
from meter.adapters.partition_reads import read_range
from meter.adapters.router import Router, ingest_time
from meter.adapters.telemetry import Telemetry
from meter.adapters.wire import TICK, Report, decode_routed
from meter.config import WorkerSettings
from meter.core.ledger import LedgerSettings, PartitionLedger, Pending
from meter.core.outputs import ALERTS, DEAD_LETTERS
from meter.core.policy import Policy

log = logging.getLogger(__name__)


class TableStore:
    """The ledger's `Store` over a faust table (bytes keys, compact JSON values)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, key: str) -> list[Any] | None:
        raw = self.table.get(key.encode())
        if raw is None:
            return None
        value: list[Any] = json.loads(raw)
        return value

    def put(self, key: str, value: list[Any]) -> None:
        self.table[key.encode()] = json.dumps(value, separators=(",", ":")).encode()

    def delete(self, key: str) -> None:
        self.table.pop(key.encode(), None)

    def items(self) -> Iterator[tuple[str, list[Any]]]:
        for key, raw in self.table.items():
            if raw is not None:
                yield (key.decode() if isinstance(key, bytes) else str(key)), json.loads(raw)


EXIT_PIPELINE_FAILURE = 70


class IdempotentProducer(AIOKafkaProducer):
    """faust turns producer idempotence on only in its exactly-once mode (which has open bugs).
    Without it, a retried send whose first attempt did reach the broker writes the record twice:
    an alert or window record published twice. The broker drops such retries when it is on.

    faust flushes before it commits offsets and before the counter publishes; its own flush can
    return with changelog records still queued, so this one also waits for every changelog record
    to be acknowledged (`meter.adapters.changelog`)."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}

    async def flush(self) -> None:
        await super().flush()
        await tracker_of(self.app).wait()


class MeterApp(faust.App):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changelog_tracker = ChangelogTracker(lambda exc: _die("changelog", exc))

    def _new_producer(self) -> Any:
        return IdempotentProducer(self.transport, loop=self.loop, beacon=self.beacon)


def _die(stage: str, exc: BaseException) -> NoReturn:
    """faust would restart a crashed agent past the failing batch, and acks it on the way out:
    counts lost. Bad input never raises (it is dead-lettered), so this is a bug or an outage:
    exit at once, without committing; a restart resumes from the last committed offsets."""
    log.critical("stopping the worker: %s failed: %r", stage, exc, exc_info=exc)
    logging.shutdown()
    os._exit(EXIT_PIPELINE_FAILURE)


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
            history_horizon_ms=settings.history_horizon_ms,
            source_topic=settings.routed_topic,
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
            broker_session_timeout=s.session_timeout_ms / 1000,
            broker_heartbeat_interval=s.heartbeat_interval_ms / 1000,
            producer_acks=-1,
            producer_max_request_size=1_048_576,
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

        self.routed = raw_topic(s.routed_topic, partitions=s.partitions)
        self.dlq = raw_topic(s.dlq_topic)
        self.alerts = raw_topic(s.alerts_topic)
        self.windows = raw_topic(s.windows_topic)
        self.table = app.tables.add(
            LedgerTable(
                app,
                name="ledger",
                default=None,
                beacon=app.tables.beacon,
                partitions=s.partitions,
                key_type=bytes,
                value_type=bytes,
            )
        )
        self.store = TableStore(self.table)
        self.topics = {
            s.routed_topic: self.routed,
            s.dlq_topic: self.dlq,
            s.alerts_topic: self.alerts,
            s.windows_topic: self.windows,
        }
        self.router = Router(s, self.policy, self.bootstrap, self.telemetry, self._send, self.clock)
        app.task(self._run_router)
        app.agent(self.routed, name="count")(self._count)
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        self.telemetry.install(app, self)
        return app

    async def _on_revoked(self, sender: Any, revoked: set[TP], **_: Any) -> None:
        # State of a revoked partition may change elsewhere: rebuild from the table when it returns.
        for tp in revoked:
            if tp.topic == self.settings.routed_topic:
                self.ledgers.pop(tp.partition, None)
                self.unsent.pop(tp.partition, None)

    # -- stage 1: the router -------------------------------------------------------------------
    async def _run_router(self) -> None:
        try:
            await self.router.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.app.should_stop:
                # The producer may stop before this task: the batch in hand was not committed,
                # so whoever routes next routes it again. Not a failure.
                log.info("router stopped with a batch in hand (%r): it will be routed again", exc)
                return
            _die("route", exc)

    async def _send(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> Any:
        """Hand a record to the producer; returns what to await for Kafka's acknowledgement."""
        return await self.topics[topic].send(
            key=key, value=value, headers=headers, partition=partition
        )

    # -- stage 2: count ------------------------------------------------------------------------
    async def _count(self, stream: Any) -> None:
        # One routed record at a time: each carries many events (one organisation's share of a
        # router batch), so faust's cost per record is spread over them. faust sets the current
        # event, which sends the table's changelog writes to this record's partition.
        async for event in stream.events():
            try:
                await self._count_record(event.message)
            except Exception as exc:
                _die("count", exc)

    async def _count_record(self, msg: Any) -> None:
        partition = msg.partition
        ledger = self.ledgers.get(partition)
        if ledger is None:
            ledger = await self._bootstrap(partition)
            if self.ledgers.get(partition) is not ledger:
                return  # revoked meanwhile: whoever counts it next finds the gap and reads it
        expected = ledger.next_offset()
        if expected is not None and msg.offset > expected:
            await self._fill_gap(ledger, partition, expected, msg.offset)
        now_ms = int(self.clock() * 1000)
        timestamp_ms = int(msg.timestamp * 1000) if msg.timestamp else None
        self._apply(ledger, msg.offset, msg.value or TICK, timestamp_ms, now_ms)
        ledger.flush()
        if self.unsent.get(partition):
            await self._publish(partition, ledger)

    def _apply(
        self,
        ledger: PartitionLedger,
        offset: int,
        value: bytes,
        timestamp_ms: int | None,
        now_ms: int,
    ) -> None:
        routed = decode_routed(value)
        if routed is None:
            ledger.skip(offset)
            return
        if isinstance(routed, Report):
            applied = ledger.report(
                offset, routed.partitions, routed.stamp_ms, routed.sources, now_ms
            )
            if applied.outbox:
                self.unsent.setdefault(ledger.partition, []).extend(applied.outbox)
            return
        calls = routed.events
        ingest_ms = routed.ingest_ms
        if ingest_ms is None:  # written before routed records carried it
            ingest_ms = ingest_time(timestamp_ms, now_ms)
        started = time.perf_counter()
        applied = ledger.apply(offset, calls, now_ms, ingest_ms, routed.levels)
        self.telemetry.applied(applied.stats, len(calls), time.perf_counter() - started)
        if applied.outbox:
            self.unsent.setdefault(ledger.partition, []).extend(applied.outbox)

    async def _fill_gap(
        self, ledger: PartitionLedger, partition: int, start: int, end: int
    ) -> None:
        """Apply routed records [start, end) that faust's consumer skipped (see the module doc)."""
        log.warning(
            "partition %d: records %d..%d were skipped by the consumer; reading them directly",
            partition,
            start,
            end - 1,
        )
        records = await read_range(
            self.bootstrap, self.settings.routed_topic, partition, start, end
        )
        now_ms = int(self.clock() * 1000)
        for offset, value, timestamp_ms in records:
            self._apply(ledger, offset, value or TICK, timestamp_ms, now_ms)
        self.telemetry.gap_filled(len(records))
        # Tell faust's consumer every offset before `end` is done: it never delivered these, so
        # it would never commit past them. That includes offsets it skipped below `start`,
        # which the ledger already held (its replays are skipped whole): without them faust's
        # committed offset stays behind the hole for good. (faust clamps the range to what it
        # has not committed yet.)
        add_gap = getattr(self.app.consumer, "_add_gap", None)
        if add_gap is not None:
            await add_gap(TP(self.settings.routed_topic, partition), 0, end - 1)
        if len(records) != end - start:
            log.error(
                "partition %d: only %d of routed records %d..%d could be read (retention?)",
                partition,
                len(records),
                start,
                end - 1,
            )

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
        s = self.settings
        if kind == ALERTS:
            return s.alerts_topic
        return s.dlq_topic if kind == DEAD_LETTERS else s.windows_topic

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
            name = self._topic_name(p.record.kind)
            headers = [(ID_HEADER, p.record.id.encode())]
            headers += [(k, v.encode()) for k, v in p.record.headers]
            futures.append(
                await self.topics[name].send(
                    key=p.record.key.encode(),
                    value=json.dumps(p.record.value, separators=(",", ":")).encode(),
                    partition=self._out_partition(name, partition),
                    timestamp=p.record.ts_ms / 1000,
                    headers=headers,
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

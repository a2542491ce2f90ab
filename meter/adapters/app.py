"""The faust app of a worker: consumer group, producer, the changelog-backed ledger table and the
topics it writes. faust's windowed tables are not used: window logic lives in the core.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import faust
from faust.transport.drivers.aiokafka import Producer as AIOKafkaProducer

from meter.adapters.changelog import (
    BatchSender,
    ChangelogTracker,
    LedgerTable,
    Outgoing,
    TableStore,
    tracker_of,
)
from meter.adapters.kafka_security import faust_args
from meter.worker_settings import WorkerSettings

log = logging.getLogger(__name__)

EXIT_PIPELINE_FAILURE = 70
CHANGELOG_BATCH_BYTES = 256 * 1024


def die(stage: str, exc: BaseException) -> NoReturn:
    """faust would restart a crashed agent past the failing batch, and acks it on the way out:
    counts lost. Bad input never raises (it is dead-lettered), so this is a bug or an outage:
    exit at once, without committing; a restart resumes from the last committed offsets."""
    log.critical("stopping the worker: %s failed: %r", stage, exc, exc_info=exc)
    logging.shutdown()
    os._exit(EXIT_PIPELINE_FAILURE)


class IdempotentProducer(AIOKafkaProducer):
    """faust turns producer idempotence on only in its exactly-once mode (which has open bugs).
    Without it, a retried send whose first attempt did reach the broker writes the record twice:
    an alert or window record published twice. The broker drops such retries when it is on.

    faust flushes before it commits offsets and before the counter publishes; its own flush can
    return with changelog records still queued, so this one also waits for every changelog record
    to be acknowledged (`meter.adapters.changelog`)."""

    # faust's service lifecycle lines ("Starting...") stay with faust's (quiet unless -v).
    logger = logging.getLogger("faust.transport.producer")

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}

    async def flush(self) -> None:
        await super().flush()
        await tracker_of(self.app).wait()

    async def send_records(
        self, topic: str, partition: int, records: Sequence[Outgoing]
    ) -> list[tuple[Awaitable[Any], int]]:
        """Queue `records` for `partition` of `topic` as record batches, in order; returns each
        batch's acknowledgement and its number of records. One batch is one append on the
        broker: no future, buffer entry or callback per record."""
        producer = self._ensure_producer()
        sent = []
        batch = producer.create_batch()
        for key, value, timestamp, headers in records:
            if batch.append(key=key, value=value, timestamp=timestamp, headers=headers) is None:
                count = batch.record_count()
                sent.append((await producer.send_batch(batch, topic, partition=partition), count))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=timestamp, headers=headers) is None:
                    raise ValueError(f"a record of {len(value or b'')} bytes fits no batch")
        count = batch.record_count()
        sent.append((await producer.send_batch(batch, topic, partition=partition), count))
        return sent


class MeterApp(faust.App):
    logger = logging.getLogger("faust.app")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changelog_tracker = ChangelogTracker(lambda exc: die("changelog", exc))

    def _new_producer(self) -> Any:
        return IdempotentProducer(self.transport, loop=self.loop, beacon=self.beacon)


@dataclass
class App:
    """The faust app and what hangs off it: raw topics by name, and the ledger's store."""

    faust: MeterApp
    topics: dict[str, Any]
    store: TableStore
    sender: Callable[[], BatchSender]
    """The producer, for records sent as record batches (`IdempotentProducer.send_records`)."""

    def topic(self, name: str) -> Any:
        return self.topics[name]


def build_app(settings: WorkerSettings, bootstrap: str) -> App:
    s = settings
    app = MeterApp(
        s.group,
        broker=f"kafka://{bootstrap}",
        **faust_args(s.kafka_security),
        store="rocksdb://" if s.store == "rocksdb" else "memory://",
        datadir=str(s.data_dir),
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication or 1,  # faust declares no topic here
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=s.session_timeout_ms / 1000,
        broker_heartbeat_interval=s.heartbeat_interval_ms / 1000,
        producer_acks=-1,
        producer_max_request_size=1_048_576,
        # Changelog batches (`meter.adapters.changelog`) hold up to this much of a flush each.
        producer_max_batch_size=CHANGELOG_BATCH_BYTES,
        web_enabled=True,
        # Only /metrics, /healthz and /readyz: faust's own pages would show raw ledger state
        # (/table), the partition map (/router) and internals to anyone reaching the port.
        web_tables_enabled=False,
        web_router_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
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

    topics = {
        # acks=False: faust does not commit the routed topic; the counter commits what its
        # ledgers applied (`meter.adapters.routed_offsets`).
        s.routed_topic: raw_topic(s.routed_topic, partitions=s.partitions, acks=False),
        s.dlq_topic: raw_topic(s.dlq_topic),
        s.alerts_topic: raw_topic(s.alerts_topic),
        s.windows_topic: raw_topic(s.windows_topic),
        s.quota_topic: raw_topic(s.quota_topic),
    }
    table = app.tables.add(
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

    def batch_sender() -> IdempotentProducer:
        producer = app.producer
        if not isinstance(producer, IdempotentProducer):
            raise TypeError(f"{producer!r} cannot send record batches")
        return producer

    return App(app, topics, TableStore(table, batch_sender), batch_sender)

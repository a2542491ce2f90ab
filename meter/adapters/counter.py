"""Stage 2, the counter: folds each routed record into its partition's `PartitionLedger` (state in
the faust table), then publishes what the ledger put in its outbox.

faust's consumer can drop records from its buffers in a rebalance, and a committed offset can be
ahead of the changelog a ledger is restored from. The routed topic's offsets are contiguous (it is
written without transactions, so it holds no control records), so the ledger remembers the last
offset it saw: a record further on than the next one reveals records it missed, and the counter
reads those itself, by offset, before it goes on. A ledger with no state at all has applied
nothing, so it expects the partition's first record: one that is handed a later record first reads
back from there. Records it already applied are skipped whole.
The offsets to resume from are committed from the ledgers (`meter.adapters.routed_offsets`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec

from meter.adapters.app import App
from meter.adapters.changelog import Outgoing, PartitionStore, tracker_of
from meter.adapters.outbox import ID_HEADER, already_published
from meter.adapters.partition_reads import first_offset, read_range
from meter.adapters.routed_offsets import RoutedOffsets
from meter.adapters.telemetry import PartitionState, Telemetry
from meter.adapters.wire import TICK, Report, decode_routed, ingest_time
from meter.core.ledger import CapUsage, LedgerSettings, PartitionLedger, Pending
from meter.core.outputs import ALERTS, DEAD_LETTERS, QUOTA
from meter.core.policy import Policy
from meter.worker_settings import WorkerSettings

log = logging.getLogger(__name__)
_JSON = msgspec.json.Encoder()
"""Output values as compact JSON (as `json.dumps` with compact separators, non-ASCII as UTF-8)."""


class Counter:
    """The ledgers of the routed partitions this worker owns, and their unsent outputs."""

    def __init__(
        self,
        settings: WorkerSettings,
        policy: Policy,
        bootstrap: str,
        app: App,
        telemetry: Telemetry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.bootstrap = bootstrap
        self.app = app
        self.telemetry = telemetry
        self.clock = clock
        self.ledger_settings = LedgerSettings(
            grace_ms=settings.grace_ms,
            dedup_horizon_ms=settings.dedup_horizon_ms,
            late_horizon_ms=settings.late_horizon_ms,
            history_horizon_ms=settings.history_horizon_ms,
            source_topic=settings.routed_topic,
            quota_interval_ms=settings.quota_interval_ms,
            unknown_app_alerts=settings.unknown_app_alerts,
            max_unknown_apps=settings.max_unknown_apps,
        )
        self.ledgers: dict[int, PartitionLedger] = {}
        self.stores: dict[int, PartitionStore] = {}
        """Each ledger's store: what its flushes wrote is shipped to the changelog from here."""
        self.unsent: dict[int, list[Pending]] = {}
        self.revocations: dict[int, int] = {}
        """Per partition, how many times it was revoked: a count that moved while a record
        waited on Kafka (building the ledger, reading skipped records) means the partition left
        meanwhile, and whatever the wait returned must not be used."""
        self.in_flight: dict[int, int] = {}
        """Outputs handed to the producer and not yet acknowledged by Kafka, per partition."""
        self.offsets = RoutedOffsets(
            lambda: app.faust.consumer, settings.routed_topic, lambda: tracker_of(app.faust)
        )
        self.out_partitions: dict[str, int] = {}
        """Partitions of each output topic (outputs of ledger p go to partition p mod that)."""

    # -- what telemetry sees -------------------------------------------------------------------
    def cap_usages(self) -> Iterable[CapUsage]:
        for ledger in list(self.ledgers.values()):
            yield from list(ledger.usage.values())

    def partition_states(self) -> Iterable[PartitionState]:
        for p, ledger in sorted(self.ledgers.items()):
            yield PartitionState(
                p, ledger.close_wm, ledger.event_wm, ledger.state_sizes(),
                len(self.unsent.get(p, ())) + self.in_flight.get(p, 0),
            )  # fmt: skip

    def revoked(self, partitions: Iterable[int]) -> None:
        """State of a revoked partition may change elsewhere: rebuilt from the table on return."""
        gone = list(partitions)
        for p in gone:
            self.ledgers.pop(p, None)
            self.stores.pop(p, None)
            self.unsent.pop(p, None)
            self.revocations[p] = self.revocations.get(p, 0) + 1
        self.offsets.forget(gone)

    async def commit(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        """Commit the routed offsets the ledgers applied (of `partitions`, default all)."""
        wanted = None if partitions is None else set(partitions)
        applied = {
            p: offset
            for p, ledger in self.ledgers.items()
            if (wanted is None or p in wanted) and (offset := ledger.next_offset()) is not None
        }
        return await self.offsets.commit(applied)

    # -- counting ------------------------------------------------------------------------------
    async def count(self, msg: Any) -> None:
        """Fold one routed record (a faust message), after any records faust skipped before it,
        then publish the partition's outputs."""
        partition = msg.partition
        epoch = self.revocations.get(partition, 0)
        ledger = self.ledgers.get(partition)
        expected: int | None
        if ledger is None:
            ledger, store, expected = await self._bootstrap(partition)
            if self.revocations.get(partition, 0) != epoch:
                # Revoked while the ledger was built (a rebalance during a Kafka outage): its
                # state may already change elsewhere. Not kept, the record not applied: the
                # next owner counts it.
                log.info("partition %d: revoked while its ledger was built; left to its new "
                         "owner", partition)  # fmt: skip
                self.unsent.pop(partition, None)  # its new owner reconciles the outbox
                return
            self.ledgers[partition] = ledger
            self.stores[partition] = store
        else:
            expected = ledger.next_offset()
        if expected is not None and msg.offset > expected:
            skipped = await self._read_gap(partition, expected, msg.offset)
            if self.revocations.get(partition, 0) != epoch:
                return  # revoked while reading: the ledger is gone, the next owner reads them
            self._fill_gap(ledger, partition, expected, msg.offset, skipped)
        now_ms = int(self.clock() * 1000)
        timestamp_ms = int(msg.timestamp * 1000) if msg.timestamp else None
        self._apply(ledger, msg.offset, msg.value or TICK, timestamp_ms, now_ms)
        ledger.flush()
        await self.stores[partition].ship()
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
        else:
            ingest_ms = routed.ingest_ms
            if ingest_ms is None:  # written before routed records carried it
                ingest_ms = ingest_time(timestamp_ms, now_ms)
            started = time.perf_counter()
            applied = ledger.apply(offset, routed.events, now_ms, ingest_ms, routed.levels)
            self.telemetry.applied(applied.stats, len(routed.events), time.perf_counter() - started)
        if applied.outbox:
            self.unsent.setdefault(ledger.partition, []).extend(applied.outbox)

    async def _read_gap(
        self, partition: int, start: int, end: int
    ) -> list[tuple[int, bytes | None, int | None]]:
        """Routed records [start, end) that faust's consumer skipped (see the module doc)."""
        log.warning(
            "partition %d: records %d..%d were skipped by the consumer; reading them directly",
            partition,
            start,
            end - 1,
        )
        return await read_range(
            self.bootstrap, self.settings.routed_topic, partition, start, end,
            security=self.settings.kafka_security,
        )  # fmt: skip

    def _fill_gap(
        self,
        ledger: PartitionLedger,
        partition: int,
        start: int,
        end: int,
        records: list[tuple[int, bytes | None, int | None]],
    ) -> None:
        """Apply the skipped records `_read_gap` read."""
        now_ms = int(self.clock() * 1000)
        for offset, value, timestamp_ms in records:
            self._apply(ledger, offset, value or TICK, timestamp_ms, now_ms)
        self.telemetry.gap_filled(len(records))
        if len(records) != end - start:
            log.error(
                "partition %d: only %d of routed records %d..%d could be read (retention?)",
                partition,
                len(records),
                start,
                end - 1,
            )

    async def _bootstrap(self, partition: int) -> tuple[PartitionLedger, PartitionStore, int]:
        """The partition's ledger rebuilt from the table, its store, and the routed offset it
        expects."""
        store = self.app.store.partition(partition)
        ledger = PartitionLedger(partition, self.policy, self.ledger_settings, store)
        pending = ledger.bootstrap(store.items())
        if pending:
            log.info("partition %d: %d outbox record(s) to reconcile", partition, len(pending))
            published = await self._published_ids(partition, pending)
            ledger.acknowledge([p for p in pending if p.record.id in published])
            remaining = [p for p in pending if p.record.id not in published]
            if remaining:
                self.unsent[partition] = remaining
        expected = ledger.next_offset()
        if expected is None:
            # No state: this partition's records were never applied (the meta key, written with
            # every flush, is never deleted), so its first record is due. faust may hand over a
            # later one first (it can drop fetched records in a rebalance and, with no committed
            # offset, go on past them): the counter must know where the partition starts.
            expected = await first_offset(
                self.bootstrap, self.settings.routed_topic, partition,
                security=self.settings.kafka_security,
            )  # fmt: skip
        return ledger, store, expected

    # -- publishing ----------------------------------------------------------------------------
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
                self.bootstrap, topic, part, since, (p.record.id for p in items),
                security=self.settings.kafka_security,
            )  # fmt: skip
        return found

    def _topic_name(self, kind: str) -> str:
        s = self.settings
        if kind == ALERTS:
            return s.alerts_topic
        if kind == QUOTA:
            return s.quota_topic
        return s.dlq_topic if kind == DEAD_LETTERS else s.windows_topic

    def _out_partition(self, topic: str, partition: int) -> int:
        # Outputs of ledger partition p go to partition p of the output topic (mod its size),
        # so that reconciliation after a crash reads one partition from a known time.
        return partition % self.out_partitions.get(topic, 1)

    async def _publish(self, partition: int, ledger: PartitionLedger) -> None:
        batch = self.unsent.pop(partition, [])
        self.in_flight[partition] = self.in_flight.get(partition, 0) + len(batch)
        try:
            await self._send_batch(partition, ledger, batch)
        finally:
            self.in_flight[partition] -= len(batch)

    async def _send_batch(
        self, partition: int, ledger: PartitionLedger, batch: list[Pending]
    ) -> None:
        # The state that holds these records in its outbox must be in the changelog before they
        # are published: otherwise a crash could leave them published and the state without
        # them, and a new owner (restored from the changelog) would publish them again. Only the
        # changelog records are waited for (each until Kafka acknowledged it), not everything the
        # producer holds: the router's routed records would add their latency to every alert.
        await tracker_of(self.app.faust).wait_queued()
        # Records sent as batches per output partition, in the outbox's order within each.
        groups: dict[tuple[str, int], list[Pending]] = {}
        for p in batch:
            name = self._topic_name(p.record.kind)
            groups.setdefault((name, self._out_partition(name, partition)), []).append(p)
        sender = self.app.sender()
        acks: list[tuple[Awaitable[Any], list[Pending]]] = []
        for (name, part), items in groups.items():
            start = 0
            for ack, n in await sender.send_records(name, part, [_outgoing(p) for p in items]):
                acks.append((ack, items[start : start + n]))
                start += n
        results = await asyncio.gather(*(ack for ack, _ in acks), return_exceptions=True)
        sent: list[Pending] = []
        failed: list[Pending] = []
        for (_, items), result in zip(acks, results, strict=True):
            (failed if isinstance(result, BaseException) else sent).extend(items)
        if failed:
            log.error(
                "partition %d: %d output record(s) not sent; will retry", partition, len(failed)
            )
            self.unsent[partition] = failed
        ledger.acknowledge(sent)
        self.telemetry.published(sent)


def _outgoing(p: Pending) -> Outgoing:
    """An output record as produced: its id and the record's own headers, its time."""
    record = p.record
    headers = [(ID_HEADER, record.id.encode())]
    headers += [(k, v.encode()) for k, v in record.headers]
    value = None if record.tombstone else _JSON.encode(record.value)
    return record.key.encode(), value, record.ts_ms, headers

"""A ledger flush reaches the partition's RocksDB in one write batch and the changelog as Kafka
record batches, in order, tracked until acknowledged (`meter.adapters.changelog`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

import pytest
import rocksdict
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.structs import RecordMetadata
from faust.types import TP

from meter.adapters.app import IdempotentProducer
from meter.adapters.changelog import ChangelogTracker, Outgoing, TableStore, Write

OFFSET_KEY = b"__faust\x00offset__"


class RocksStore:
    """What the worker uses of faust's rocksdb store: one raw-mode database per partition."""

    offset_key = OFFSET_KEY

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dbs: dict[int, rocksdict.Rdict] = {}
        self.persisted: dict[TP, int] = {}

    def _db_for_partition(self, partition: int) -> rocksdict.Rdict:
        if partition not in self.dbs:
            options = rocksdict.Options(raw_mode=True)
            self.dbs[partition] = rocksdict.Rdict(str(self.root / f"p{partition}"), options)
        return self.dbs[partition]

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.persisted[tp] = offset


class Topic:
    def get_topic_name(self) -> str:
        return "meter-ledger-changelog"


class App:
    def __init__(self, tracker: ChangelogTracker) -> None:
        self.changelog_tracker = tracker


class Table:
    def __init__(self, data: Any, tracker: ChangelogTracker) -> None:
        self.data = data
        self.app = App(tracker)
        self.changelog_topic = Topic()


class Sender:
    """Records every batch handed over; the test acknowledges them."""

    def __init__(self, per_batch: int) -> None:
        self.per_batch = per_batch
        self.batches: list[list[Write]] = []
        self.acks: list[asyncio.Future[RecordMetadata]] = []

    async def send_records(
        self, topic: str, partition: int, records: Sequence[Outgoing]
    ) -> list[tuple[Awaitable[Any], int]]:
        out: list[tuple[Awaitable[Any], int]] = []
        for i in range(0, len(records), self.per_batch):
            chunk: list[Write] = [(k, v) for k, v, _, _ in records[i : i + self.per_batch]]
            self.batches.append(chunk)
            ack: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
            self.acks.append(ack)
            out.append((ack, len(chunk)))
        return out


def _meta(offset: int) -> RecordMetadata:
    tp = TP("meter-ledger-changelog", 3)
    return RecordMetadata(tp.topic, tp.partition, tp, offset, -1, 0, 0)


def test_a_flush_is_written_once_locally_and_shipped_in_order_then_tracked(
    tmp_path: Path,
) -> None:
    failures: list[BaseException] = []

    async def scenario() -> None:
        tracker = ChangelogTracker(failures.append)
        data = RocksStore(tmp_path)
        sender = Sender(per_batch=2)
        store = TableStore(Table(data, tracker), lambda: sender).partition(3)
        store.put("m|marker", [1, 3])
        store.put("s|app|a|15m|0", [2, 3, "a"])
        store.delete("s|app|old|15m|0")
        store.put("w|3", [0, 3, 41])
        # Reads see a write before it is shipped; the database does not have it yet.
        assert store.get("w|3") == [0, 3, 41]
        assert data._db_for_partition(3).get(b"w|3") is None
        await store.ship()
        db = data._db_for_partition(3)
        assert db.get(b"w|3") == b"[0,3,41]"
        assert db.get(b"s|app|old|15m|0") is None
        # The changelog gets the flush's records in the ledger's order (meta key last).
        assert [k for b in sender.batches for k, _ in b] == [
            b"m|marker", b"s|app|a|15m|0", b"s|app|old|15m|0", b"w|3",
        ]  # fmt: skip
        assert sender.batches[1][0] == (b"s|app|old|15m|0", None)
        # Held until every batch is acknowledged; then the persisted offset is the last record's.
        assert not tracker.complete
        sender.acks[0].set_result(_meta(100))
        await asyncio.sleep(0)
        assert not tracker.complete
        sender.acks[1].set_result(_meta(102))
        await tracker.wait()
        assert tracker.complete
        assert data.persisted == {TP("meter-ledger-changelog", 3): 103}
        assert dict(store.items()) == {
            "m|marker": [1, 3], "s|app|a|15m|0": [2, 3, "a"], "w|3": [0, 3, 41],
        }  # fmt: skip
        await store.ship()  # nothing new: nothing sent
        assert len(sender.batches) == 2
        # A batch Kafka refuses is a failure of the whole changelog.
        store.put("w|3", [0, 3, 42])
        await store.ship()
        sender.acks[2].set_exception(RuntimeError("refused"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not tracker.complete
        for db in data.dbs.values():
            db.close()

    asyncio.run(scenario())
    assert [str(f) for f in failures] == ["refused"]


def test_a_ship_that_cannot_hand_its_batches_over_is_never_complete(tmp_path: Path) -> None:
    failures: list[BaseException] = []

    class Broken(Sender):
        async def send_records(self, *args: Any) -> list[tuple[Awaitable[Any], int]]:
            raise RuntimeError("producer closed")

    async def scenario() -> None:
        tracker = ChangelogTracker(failures.append)
        data = RocksStore(tmp_path)
        store = TableStore(Table(data, tracker), lambda: Broken(1)).partition(0)
        store.put("w|0", [0, 0, 1])
        with pytest.raises(RuntimeError):
            await store.ship()
        await asyncio.sleep(0)
        assert not tracker.complete
        data.dbs[0].close()

    asyncio.run(scenario())
    assert [str(f) for f in failures] == ["producer closed"]


class FakeAioProducer:
    """aiokafka's producer as `send_records` uses it: real record batches, sends recorded."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.sent: list[tuple[str, int, BatchBuilder]] = []

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        self.sent.append((topic, partition, batch))
        return asyncio.get_running_loop().create_future()


def test_records_are_cut_into_batches_of_the_producers_size_in_order() -> None:
    fake = FakeAioProducer(batch_size=1024)
    producer = IdempotentProducer.__new__(IdempotentProducer)
    producer._ensure_producer = lambda: fake  # type: ignore[method-assign]
    records: list[Outgoing] = [(f"k{i:03d}".encode(), b"v" * 100, None, []) for i in range(30)]
    records.append((b"gone", None, None, []))
    records.append((b"alert", b"{}", 1_700_000_000_000, [("meter-id", b"a1")]))

    sent = asyncio.run(producer.send_records("cl", 5, records))

    counts = [n for _, n in sent]
    assert len(counts) > 1
    assert sum(counts) == len(records)
    assert all(topic == "cl" and p == 5 for topic, p, _ in fake.sent)
    assert [b.record_count() for _, _, b in fake.sent] == counts
    assert all(b.size() <= 1024 for _, _, b in fake.sent)
    # The last record keeps its own timestamp and headers.
    last = list(DefaultRecordBatch(bytearray(fake.sent[-1][2]._build())))[-1]
    assert last.timestamp == 1_700_000_000_000
    assert last.headers == [("meter-id", b"a1")]


def test_a_key_written_twice_before_a_ship_is_shipped_once_where_its_last_write_is(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        tracker = ChangelogTracker(lambda exc: None)
        data = RocksStore(tmp_path)
        sender = Sender(per_batch=10)
        store = TableStore(Table(data, tracker), lambda: sender).partition(0)
        store.put("w|0", [0, 0, 1])
        store.put("s|a", [1])
        store.put("w|0", [0, 0, 2])
        assert store.get("w|0") == [0, 0, 2]
        await store.ship()
        assert sender.batches == [[(b"s|a", b"[1]"), (b"w|0", b"[0,0,2]")]]
        data.dbs[0].close()

    asyncio.run(scenario())

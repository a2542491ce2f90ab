"""The ledger table's changelog, written one record batch per ledger flush, and tracked until
Kafka acknowledges it.

After each ledger flush the counter ships what it wrote (`PartitionStore.ship`): to the table's
local store (the partition's RocksDB) in one write batch, then to the changelog in order, as Kafka
record batches built here, not one send per key through faust's producer buffer. A flush of many
subjects writes thousands of keys, and faust's per-key path (a future, a buffered message, a task
switch and an acknowledgement callback each, and a RocksDB write) cost several times what
counting them did. The changelog holds the same records faust writes itself (key, value,
partition), so faust restores the table from it unchanged.

"Flush before commit" and "flush before publish" are made true here: `ChangelogTracker.wait`
returns only once every changelog write queued so far is acknowledged, and a write Kafka refuses
stops the worker (the changelog would no longer hold what RocksDB holds). `complete` says whether
every write ever queued reached Kafka: only then may the local RocksDB files be trusted at the
next start (`meter.adapters.state_dir`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol

import faust
import msgspec
import rocksdict
from faust.types import TP

log = logging.getLogger(__name__)


class ChangelogTracker:
    """Changelog sends of the ledger table not yet acknowledged, and whether any failed."""

    def __init__(self, on_failure: Callable[[BaseException], None]) -> None:
        self.pending: set[asyncio.Future[Any]] = set()
        self.failure: BaseException | None = None
        self.on_failure = on_failure

    def track(self, fut: asyncio.Future[Any]) -> None:
        self.pending.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[Any]) -> None:
        self.pending.discard(fut)
        if fut.cancelled():
            self.failure = self.failure or asyncio.CancelledError("changelog send cancelled")
            return
        exc = fut.exception()
        if exc is not None and self.failure is None:
            self.failure = exc
            self.on_failure(exc)

    async def wait(self) -> None:
        """Return once every changelog record queued until now is acknowledged by Kafka."""
        while self.pending:
            await asyncio.wait(list(self.pending))

    async def wait_queued(self) -> None:
        """Return once every changelog record queued until now is acknowledged (records queued
        meanwhile are not waited for: under steady traffic `wait` may not return for long)."""
        queued = list(self.pending)
        if queued:
            await asyncio.wait(queued)

    @property
    def complete(self) -> bool:
        """Every changelog record ever queued was acknowledged."""
        return not self.pending and self.failure is None


def tracker_of(app: object) -> ChangelogTracker:
    """The `ChangelogTracker` a meter app carries as `changelog_tracker`."""
    tracker = getattr(app, "changelog_tracker", None)
    if not isinstance(tracker, ChangelogTracker):
        raise TypeError(f"{app!r} has no changelog tracker")
    return tracker


class LedgerTable(faust.Table[bytes, bytes]):
    """A faust table whose every changelog send is handed to the app's `ChangelogTracker`."""

    logger = logging.getLogger("faust.tables")

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        # meter writes its keys through `TableStore` (batched); anything faust writes itself
        # through the table is tracked all the same.
        fut = super().send_changelog(*args, **kwargs)
        tracker_of(self.app).track(fut)
        return fut


Write = tuple[bytes, bytes | None]
"""A changelog record: key, and value (None deletes the key)."""

Outgoing = tuple[bytes | None, bytes | None, int | None, list[tuple[str, bytes]]]
"""A record to produce: key, value, timestamp (epoch ms; None: now) and headers (a list: the
record batch builder takes nothing else)."""

_NO_HEADERS: list[tuple[str, bytes]] = []  # shared, never changed


class BatchSender(Protocol):
    """What produces records as Kafka record batches (`meter.adapters.app.IdempotentProducer`):
    the changelog's, and the counter's outputs."""

    async def send_records(
        self, topic: str, partition: int, records: Sequence[Outgoing]
    ) -> list[tuple[Awaitable[Any], int]]: ...


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[Any]).decode


class TableStore:
    """The ledger table (a faust table); `partition(p)` is the `Store` of partition p's ledger."""

    def __init__(self, table: Any, sender: Callable[[], BatchSender]) -> None:
        self.table = table
        self.sender = sender

    def partition(self, partition: int) -> PartitionStore:
        return PartitionStore(self, partition)


class PartitionStore:
    """One partition's ledger state: bytes keys, compact JSON values, in the table's local store
    (RocksDB, or faust's in-memory store) and its changelog.

    Writes are kept until `ship`, which writes them to the local store in one batch and then to
    the changelog, in the order of each key's last write; reads see them meanwhile. The ledger
    flushes, then the counter ships.
    """

    def __init__(self, table: TableStore, partition: int) -> None:
        self.table = table
        self.partition = partition
        self.data = table.table.data
        """faust's store of the table (created by now: the ledger is built while counting)."""
        self._open_db = getattr(self.data, "_db_for_partition", None)
        self.pending: dict[bytes, bytes | None] = {}
        """Writes not shipped yet (None deletes), in the order of each key's last write."""

    def _db(self) -> Any | None:
        """The partition's RocksDB (faust's rocksdb store opens one per partition), or None
        for the in-memory store. Looked up each time: faust closes it when the partition goes."""
        return None if self._open_db is None else self._open_db(self.partition)

    def get(self, key: str) -> list[Any] | None:
        k = key.encode()
        pending = self.pending
        if k in pending:
            raw = pending[k]
        else:
            db = self._db()
            raw = self.data.get(k) if db is None else db.get(k)
        return None if raw is None else _decode(raw)

    def put(self, key: str, value: list[Any]) -> None:
        self._write(key.encode(), _encode(value))

    def delete(self, key: str) -> None:
        self._write(key.encode(), None)

    def _write(self, k: bytes, v: bytes | None) -> None:
        pending = self.pending
        pending.pop(k, None)  # a key written again goes where its last write is
        pending[k] = v

    def items(self) -> Iterator[tuple[str, list[Any]]]:
        """Everything the local store holds for this partition (after a restore, what the
        changelog holds)."""
        data = self.data
        db = self._db()
        if db is None:
            found = data.items()
        else:
            offset_key = data.offset_key  # faust's own bookkeeping, in the same database
            found = ((k, v) for k, v in db.items() if k != offset_key)
        for key, raw in found:
            if raw is not None:
                yield (key.decode() if isinstance(key, bytes) else str(key)), _decode(raw)

    def take(self) -> list[Write]:
        """Write the changes since the last call to the local store; returns them, in order,
        for the changelog."""
        writes = list(self.pending.items())
        self.pending.clear()
        db = self._db()
        if db is None:
            data = self.data
            for k, v in writes:
                if v is None:
                    data.pop(k, None)
                else:
                    data[k] = v
            return writes
        batch = rocksdict.WriteBatch(raw_mode=True)  # as faust applies changelog batches
        for k, v in writes:
            if v is None:
                batch.delete(k)
            else:
                batch.put(k, v)
        db.write(batch)
        return writes

    async def ship(self) -> None:
        """Write the changes since the last `ship` to the local store, then send them to the
        changelog's partition in order (a Kafka record batch per ~256 KiB). The tracker holds
        them from before the first await: a worker stopped halfway never calls its local files
        complete, and nothing commits past them."""
        if not self.pending:
            return
        table = self.table.table
        tracker = tracker_of(table.app)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        tracker.track(done)
        writes = self.take()
        topic = table.changelog_topic.get_topic_name()
        partition = self.partition
        try:
            records = [(k, v, None, _NO_HEADERS) for k, v in writes]
            sent = await self.table.sender().send_records(topic, partition, records)
        except asyncio.CancelledError:
            done.cancel()
            raise
        except Exception as exc:
            done.set_exception(exc)
            raise
        acks = asyncio.gather(*(ack for ack, _ in sent))
        last_count = sent[-1][1]

        def acknowledged(fut: asyncio.Future[list[Any]]) -> None:
            if fut.cancelled():
                done.cancel()
            elif (exc := fut.exception()) is not None:
                done.set_exception(exc)
            else:
                last = fut.result()[-1].offset + last_count - 1
                self.persisted(TP(topic, partition), last)
                done.set_result(None)

        acks.add_done_callback(acknowledged)

    def persisted(self, tp: TP, offset: int) -> None:
        """The changelog holds everything up to `offset`. As faust does per record: the local
        store remembers it, so a restart with these files reads the changelog only from there."""
        self.data.set_persisted_offset(tp, offset)

"""The ledger table's changelog, written one record batch per ledger flush, and tracked until
Kafka acknowledges it.

A ledger flush writes its keys to the table's local store (RocksDB) at once, and then all of them
to the changelog in order, as Kafka record batches built here (`TableStore.ship`), not one send
per key through faust's producer buffer: a flush of many subjects writes thousands of keys, and
faust's per-key path (a future, a queued message, a task switch and an acknowledgement callback
each) cost several times what counting them did. The changelog holds the same records faust
writes itself (key, value, partition), so faust restores the table from it unchanged.

"Flush before commit" and "flush before publish" are made true here: `ChangelogTracker.wait`
returns only once every changelog write queued so far is acknowledged, and a write Kafka refuses
stops the worker (the changelog would no longer hold what RocksDB holds). `complete` says whether
every write ever queued reached Kafka: only then may the local RocksDB files be trusted at the
next start (`meter.adapters.state_dir`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol

import faust
import msgspec
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


class BatchSender(Protocol):
    """What ships changelog batches (`meter.adapters.app.IdempotentProducer`)."""

    async def send_records(
        self, topic: str, partition: int, records: Sequence[Write]
    ) -> list[tuple[Awaitable[Any], int]]: ...


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[Any]).decode


class TableStore:
    """The ledger's `Store` over a faust table: bytes keys, compact JSON values.

    Writes go to the table's local store at once (reads see them) and are kept in order until
    `ship` sends them to the changelog, so they must be shipped after every ledger flush, from
    the routed record being counted (faust's stores pick the partition from the current event).
    """

    def __init__(self, table: Any, sender: Callable[[], BatchSender]) -> None:
        self.table = table
        self.sender = sender
        self.pending: list[Write] = []

    def get(self, key: str) -> list[Any] | None:
        raw = self.table.data.get(key.encode())
        return None if raw is None else _decode(raw)

    def put(self, key: str, value: list[Any]) -> None:
        k, v = key.encode(), _encode(value)
        self.table.data[k] = v
        self.pending.append((k, v))

    def delete(self, key: str) -> None:
        k = key.encode()
        with contextlib.suppress(KeyError):
            del self.table.data[k]
        self.pending.append((k, None))

    def items(self) -> Iterator[tuple[str, list[Any]]]:
        for key, raw in self.table.data.items():
            if raw is not None:
                yield (key.decode() if isinstance(key, bytes) else str(key)), _decode(raw)

    async def ship(self, partition: int) -> None:
        """Send the writes since the last `ship` to the changelog's `partition`, in order (one
        record batch per ~256 KiB). The tracker holds them from before the first await: a worker
        stopped halfway never calls its local files complete, and nothing commits past them."""
        writes, self.pending = self.pending, []
        if not writes:
            return
        tracker = tracker_of(self.table.app)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        tracker.track(done)
        topic = self.table.changelog_topic.get_topic_name()
        try:
            sent = await self.sender().send_records(topic, partition, writes)
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
        self.table.data.set_persisted_offset(tp, offset)

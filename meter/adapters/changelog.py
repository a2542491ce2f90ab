"""The ledger table's changelog, tracked record by record until Kafka acknowledges it.

faust writes a table key to RocksDB at once and only queues its changelog record; its producer
flush can return with records still queued. So "flush before commit" and "flush before publish"
are made true here: `ChangelogTracker.wait` returns only once every changelog record queued so
far is acknowledged, and a record Kafka refuses stops the worker (the changelog would no longer
hold what RocksDB holds). `complete` says whether every record ever queued reached Kafka: only
then may the local RocksDB files be trusted at the next start (`meter.adapters.state_dir`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import faust

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
        fut = super().send_changelog(*args, **kwargs)
        tracker_of(self.app).track(fut)
        return fut

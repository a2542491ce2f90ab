"""The ledger's view of its key-value store: reads are cached, writes wait for `flush()`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from meter.core.ledger.records import Encoded, Record, WindowSlot, decode


class Store(Protocol):
    """Key-value state of one partition (a faust table in the worker, a dict in tests)."""

    def get(self, key: str) -> Encoded | None: ...
    def put(self, key: str, value: Encoded) -> None: ...
    def delete(self, key: str) -> None: ...


class WriteBackCache:
    """Typed records over a `Store`; `flush` writes what changed, one key last."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.values: dict[str, Record] = {}
        self.dirty: set[str] = set()
        self.deleted: set[str] = set()

    def get(self, key: str) -> Record | None:
        value = self.values.get(key)
        if value is None and key not in self.deleted:
            raw = self.store.get(key)
            if raw is not None:
                value = self.values[key] = decode(key, raw)
        return value

    def put(self, key: str, value: Record) -> None:
        self.values[key] = value
        self.dirty.add(key)
        self.deleted.discard(key)

    def delete(self, key: str) -> None:
        self.values.pop(key, None)
        self.dirty.discard(key)
        self.deleted.add(key)

    def flush(self, last: str | None = None) -> int:
        """Write every changed key to the store: markers (`m|...`: once-a-day alerts, budgets,
        the unknown apps tracked) first, key `last` after all others. The changelog keeps the
        order, so a crash leaves a prefix of it: a window is never written without the
        decisions that led to it. Returns how many writes that took."""
        put = self.store.put
        values = self.values
        later = []
        for key in self.dirty:
            if key[0] == "m":
                put(key, values[key].encode())
            elif key != last:
                later.append(key)
        for key in later:
            put(key, values[key].encode())
        for key in self.deleted:
            self.store.delete(key)
        if last is not None and last in self.dirty:
            put(last, values[last].encode())
        n = len(self.dirty) + len(self.deleted)
        self._evict(self.dirty)
        self.dirty.clear()
        self.deleted.clear()
        return n

    def _evict(self, keys: Iterable[str]) -> None:
        # Closed windows and id blocks are rarely read again: keep only what is live in memory.
        values = self.values
        for key in keys:
            value = values[key]
            if key[0] == "d" or (
                isinstance(value, WindowSlot) and value.closed and not value.outbox
            ):
                del values[key]

"""State bytes per window and per remembered event id, measured on the real ledger (on demand).

    .venv/bin/python -m bench.state_size [--orgs 2000] [--ids 100000] [--out BENCHMARKS.md]

The worker keeps its state in a faust table: each key's value is compact JSON (as
`meter.adapters.changelog` writes it) in RocksDB and in the changelog topic, and the windows that
are still open, plus the indexes of what expires when, live in the worker's Python heap. This
drives `PartitionLedger` itself through the worker's own store adapter (`PartitionStore`) over a
dict, and reports:

- **store bytes** per key kind: key plus value, what RocksDB and the changelog hold per entry
  (before their own overhead and compression);
- **heap bytes**: what the ledger holds in Python memory (`tracemalloc`, the store's own
  objects subtracted), per active (subject, window), per compacted window, per remembered id.

Traffic: `--orgs` organisations of 1 to 5 apps (`bench.subjects`: a 15-minute calls cap per app,
a daily records cap per org), one call per app; then the windows close, are published and
compacted; then `--ids` calls with UUID ids from one app.
"""

from __future__ import annotations

import argparse
import gc
import platform
import shlex
import sys
import tempfile
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.sections import markers, write_section
from bench.subjects import many_orgs, write_policy
from meter.adapters.changelog import PartitionStore, TableStore
from meter.adapters.policy_file import read_policy
from meter.core.durations import DAY_MS
from meter.core.events import ApiCall
from meter.core.ledger import LedgerSettings, PartitionLedger

T0 = 1_640_995_200_000  # 2022-01-01T00:00:00Z
NOW = 1_700_000_000_000
PER_RECORD = 1_000


class _DictTable:
    """What `TableStore` uses of a faust table: its local store, here a dict."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}


def _no_sender() -> Any:
    raise RuntimeError("nothing is shipped to a changelog here")


def _table() -> PartitionStore:
    """The worker's own store adapter over a dict instead of a faust table: the same keys and
    compact JSON values as bytes."""
    return TableStore(_DictTable(), _no_sender).partition(0)


def _by_kind(store: PartitionStore, prefix: str) -> tuple[int, int]:
    """(keys, key + value bytes) of the keys starting with `prefix`."""
    wanted = prefix.encode()
    sizes = [len(k) + len(v) for k, v in store.table.table.data.items() if k.startswith(wanted)]
    return len(sizes), sum(sizes)


def _store_heap(store: PartitionStore) -> int:
    """The store's own Python objects (subtracted from the traced heap)."""
    table = store.table.table.data
    return sys.getsizeof(table) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in table.items())


def _records(events: list[ApiCall]) -> Iterator[list[ApiCall]]:
    for i in range(0, len(events), PER_RECORD):
        yield events[i : i + PER_RECORD]


def _heap(store: PartitionStore) -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - _store_heap(store)


def _acknowledge(ledger: PartitionLedger, outbox: list[Any]) -> None:
    ledger.acknowledge(outbox)
    ledger.flush()
    assert isinstance(ledger.state.store, PartitionStore)
    ledger.state.store.take()  # as the worker does after a flush (then ships them)


def measure(orgs: int, ids: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        apps = many_orgs(orgs=orgs)
        policy = read_policy(write_policy(Path(tmp) / "policy.yaml", apps))
    out: dict[str, float] = {"apps": len(apps), "orgs": orgs}
    store = _table()
    tracemalloc.start()
    base = _heap(store)
    ledger = PartitionLedger(0, policy, LedgerSettings(), store)
    offset = 0
    # Every input partition must report once before windows can close.
    _acknowledge(ledger, ledger.report(offset, 1, NOW, {0: (T0, False)}, NOW).outbox)
    empty = _heap(store) - base

    # Active windows: one call per app, all in the first minute of 2022.
    calls = [
        ApiCall(id=f"c{i}", time_ms=T0 + i % 60_000, app_id=app, records=3, endpoint="/2/tweets")
        for i, (app, _) in enumerate(apps)
    ]
    for chunk in _records(calls):
        offset += 1
        _acknowledge(ledger, ledger.apply(offset, chunk, NOW, NOW).outbox)
    slots, slot_bytes = _by_kind(store, "s|")
    out["active windows"] = slots
    out["store bytes per active window"] = slot_bytes / slots
    heap_active = _heap(store) - base - empty
    out["heap bytes per active window (with its call's id)"] = heap_active / slots

    # Closed, published and compacted: event time one late horizon and a day past them.
    offset += 1
    wm = T0 + 2 * DAY_MS + 3_600_000
    _acknowledge(ledger, ledger.report(offset, 1, NOW, {0: (wm, False)}, NOW).outbox)
    compact, compact_bytes = _by_kind(store, "s|")
    out["compacted windows"] = compact
    out["store bytes per compacted window"] = compact_bytes / compact
    out["heap bytes per compacted window"] = (_heap(store) - base - empty) / compact

    # Remembered ids: `ids` UUID calls of one app, ingested within the dedup horizon.
    store_ids = _table()
    ledger2 = PartitionLedger(0, policy, LedgerSettings(), store_ids)
    _acknowledge(ledger2, ledger2.report(0, 1, NOW, {0: (T0, False)}, NOW).outbox)
    before = _heap(store_ids)
    app = apps[0][0]
    events = [
        ApiCall(id=str(uuid.UUID(int=i + 1, version=4)), time_ms=T0 + i, app_id=app)
        for i in range(ids)
    ]
    for n, chunk in enumerate(_records(events)):
        _acknowledge(ledger2, ledger2.apply(n + 1, chunk, NOW, NOW + n).outbox)
    del events, chunk
    _, ids_bytes = _by_kind(store_ids, "d|")
    remembered = ledger2.state_sizes()["ids"]
    out["remembered ids"] = remembered
    out["store bytes per remembered id"] = ids_bytes / remembered
    out["heap bytes per remembered id"] = (_heap(store_ids) - before) / remembered
    tracemalloc.stop()
    return out


def section(figures: dict[str, float], argv: list[str]) -> str:
    begin, end = markers("bench.state_size")
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "-m", "bench.state_size", *argv])
    lines = [
        begin,
        "## State memory (`python -m bench.state_size`)",
        "",
        f"Run {when}: `{command}`. Python {platform.python_version()}; the real "
        "`PartitionLedger` with a store that serialises like the worker's faust table (compact "
        "JSON values in RocksDB and the changelog). *Store bytes* = key + value per entry, "
        "before RocksDB's and Kafka's own overhead and compression; *heap bytes* = the ledger's "
        "Python memory (`tracemalloc`, the store's own objects subtracted), divided by the "
        "windows or ids, so per-subject caches (caps, the quota feed's last sends) are spread "
        "over the windows.",
        "",
        "| figure | value |",
        "|---|---:|",
        *(f"| {name} | {value:,.0f} |" for name, value in figures.items()),
        "",
        end,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orgs", type=int, default=2_000)
    parser.add_argument("--ids", type=int, default=100_000)
    parser.add_argument("--out", type=Path, help="also write the figures into this report")
    args = parser.parse_args(argv)
    figures = measure(args.orgs, args.ids)
    for name, value in figures.items():
        print(f"{name:55} {value:>12,.0f}")
    if args.out:
        write_section(args.out, "bench.state_size", section(figures, argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

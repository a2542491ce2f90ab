"""`meter` with the ledger's changelog held back, for the crash tests: run as
`python -m tests.integration.slow_changelog worker ...`.

The worker writes a flush's keys to RocksDB at once and then ships them to the changelog
(`meter.adapters.changelog`); RocksDB's "persisted offset" is written when a batch is
acknowledged. Here both lag on purpose: every flush waits a moment before it is handed to the
producer (now and then much longer), so RocksDB holds writes the changelog does not have yet, and
the persisted offset is only advanced to the acknowledgement `PERSIST_LAG` acks before the latest
one. A SIGKILL then always leaves a data dir whose RocksDB holds writes the changelog never got,
with a persisted offset behind the changelog's end: the state that lost counts after a restart
with the same data dir.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from typing import Any

from faust.types import TP

from meter.adapters.app import IdempotentProducer
from meter.adapters.changelog import PartitionStore
from meter.cli import main

SEND_DELAY_S = 0.002
STALL_EVERY = 40
STALL_S = 0.15
PERSIST_LAG = 50

_send_records = IdempotentProducer.send_records
_persisted = PartitionStore.persisted
_acks: collections.deque[tuple[TP, int]] = collections.deque()
_sent = [0]


async def _slow_send_records(self: IdempotentProducer, topic: str, *args: Any) -> Any:
    if topic.endswith("-changelog"):  # the counter's outputs go through here too: not held
        _sent[0] += 1
        await asyncio.sleep(STALL_S if _sent[0] % STALL_EVERY == 0 else SEND_DELAY_S)
    return await _send_records(self, topic, *args)


def _lagging_persisted_offset(self: PartitionStore, tp: TP, offset: int) -> None:
    _acks.append((tp, offset))
    if len(_acks) > PERSIST_LAG:
        _persisted(self, *_acks.popleft())


IdempotentProducer.send_records = _slow_send_records  # type: ignore[method-assign]
PartitionStore.persisted = _lagging_persisted_offset  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())

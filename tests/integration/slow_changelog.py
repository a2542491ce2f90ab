"""`meter` with faust's changelog held back, for the crash tests: run as
`python -m tests.integration.slow_changelog worker ...`.

faust writes a table key to RocksDB at once and only queues its changelog record; RocksDB's
"persisted offset" is written when a record's send is acknowledged. Here both lag on purpose:
every changelog record waits a moment before it is handed to the producer, so RocksDB runs
hundreds of writes ahead of the changelog, and the persisted offset is only advanced to the
acknowledgement `PERSIST_LAG` acks before the latest one. A SIGKILL then always leaves a data dir
whose RocksDB holds writes the changelog never got, with a persisted offset behind the
changelog's end: the state that lost counts after a restart with the same data dir.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from typing import Any

from faust.tables.base import Collection
from faust.transport.producer import ProducerBuffer

from meter.cli import main

SEND_DELAY_S = 0.002
STALL_EVERY = 40
STALL_S = 0.15
PERSIST_LAG = 50

_send_pending = ProducerBuffer._send_pending
_acks: collections.deque[Any] = collections.deque()
_sent = [0]


async def _slow_send_pending(self: ProducerBuffer, fut: Any) -> None:
    # A stall longer than 0.1 s also makes faust's buffer flush return with records left in it.
    _sent[0] += 1
    await asyncio.sleep(STALL_S if _sent[0] % STALL_EVERY == 0 else SEND_DELAY_S)
    await _send_pending(self, fut)


def _lagging_persisted_offset(self: Collection, fut: Any) -> None:
    _acks.append(fut.result())
    if len(_acks) > PERSIST_LAG:
        res = _acks.popleft()
        self.data.set_persisted_offset(res.topic_partition, res.offset)


ProducerBuffer._send_pending = _slow_send_pending  # type: ignore[method-assign]
Collection._on_changelog_sent = _lagging_persisted_offset  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())

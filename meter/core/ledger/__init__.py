"""The usage ledger of one routed partition, by concept:

- `ledger`: `PartitionLedger`, which applies routed records and progress reports;
- `tally`: counting events into window slots, threshold crossings, once-a-day alerts;
- `dedup`: repeated event ids, remembered by ingest time;
- `progress`: event-time watermarks from the routers' reports on every input partition;
- `lifecycle`: when windows close, compact and are forgotten;
- `outbox`: window records and dead letters, held until Kafka has them;
- `records`, `cache`: the typed state records, their encoding, and the write-back cache.
"""

from meter.core.ledger.cache import Store, WriteBackCache
from meter.core.ledger.ledger import Applied, CapUsage, LedgerSettings, PartitionLedger
from meter.core.ledger.outbox import Pending
from meter.core.ledger.progress import Progress, SourceState
from meter.core.ledger.tally import Stats

__all__ = [
    "Applied",
    "CapUsage",
    "LedgerSettings",
    "PartitionLedger",
    "Pending",
    "Progress",
    "SourceState",
    "Stats",
    "Store",
    "WriteBackCache",
]

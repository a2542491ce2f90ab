"""Helpers for unit tests of the partition ledger (pure core, no I/O): a JSON store that
serialises like the real one, events on a minute scale from T0, and one-record steps that flush
as the worker does."""

from __future__ import annotations

import json
from typing import Any

from meter.core.events import ApiCall
from meter.core.ledger import Applied, LedgerSettings, PartitionLedger, Pending
from meter.core.ledger.records import WindowSlot, decode
from meter.core.outputs import ALERTS, QUOTA, WINDOWS
from meter.core.policy import Policy

T0 = 1_640_995_200_000  # 2022-01-01T00:00:00Z
MIN = 60_000
DAY = 24 * 60 * MIN
NOW = 1_700_000_000_000

POLICY: dict[str, Any] = {
    "tiers": {
        "std": {
            "caps": [
                {"id": "calls-15m", "metric": "calls", "window": "15m", "limit": 10},
            ]
        }
    },
    "orgs": {
        "acme": {
            "name": "Acme",
            "caps": [
                {
                    "id": "records-1h",
                    "metric": "records",
                    "window": "1h",
                    "limit": 100,
                    "status": ["2xx"],
                }
            ],
        },
        "gov-ok": {"name": "Notified", "government_notice": "2021-01-01"},
    },
    "apps": {
        "a1": {"org": "acme", "tier": "std"},
        "a2": {"org": "acme", "tier": "std"},
        "g1": {"org": "gov-ok", "tier": "std"},
    },
    "restricted_uses": [{"recipient": "government", "requires": "notice"}],
}


class JsonStore:
    """A dict store that serialises like the real one, so no object is shared with the ledger."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.puts = 0
        self.fail_after: int | None = None

    def get(self, key: str) -> list[Any] | None:
        raw = self.data.get(key)
        return None if raw is None else json.loads(raw)

    def put(self, key: str, value: list[Any]) -> None:
        if self.fail_after is not None and self.puts >= self.fail_after:
            raise RuntimeError("crash")
        self.puts += 1
        self.data[key] = json.dumps(value)

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def items(self) -> list[tuple[str, list[Any]]]:
        return [(k, json.loads(v)) for k, v in self.data.items()]


def ev(i: str, minute: float, app: str = "a1", records: int = 0, **kw: Any) -> ApiCall:
    return ApiCall(id=i, time_ms=T0 + int(minute * MIN), app_id=app, records=records, **kw)


def new_ledger(policy: Policy, store: JsonStore, **settings: int) -> PartitionLedger:
    s = LedgerSettings(grace_ms=settings.pop("grace_ms", MIN), **settings)  # type: ignore[arg-type]
    return PartitionLedger(0, policy, s, store)


def run(
    ledger: PartitionLedger,
    offset: int,
    events: list[ApiCall],
    now: int = NOW,
    ingest: int | None = None,
) -> Applied:
    """Apply one record and flush, as the worker does before publishing and committing. The
    record reached Kafka at `ingest` (default: `now`)."""
    applied = ledger.apply(offset, events, now, now if ingest is None else ingest)
    ledger.flush()
    return applied


def progress(
    ledger: PartitionLedger,
    offset: int,
    minute: float | None,
    *,
    idle: bool = False,
    stamp: int = NOW,
    source: int = 0,
    partitions: int = 1,
) -> Applied:
    """A router's report that input partition `source` has reached `minute` (after T0)."""
    wm = None if minute is None else T0 + int(minute * MIN)
    applied = ledger.report(offset, partitions, stamp, {source: (wm, idle)}, NOW)
    ledger.flush()
    return applied


def slot(store: JsonStore, stype: str, subject: str, window: str, start_min: int) -> WindowSlot:
    key = f"s|{stype}|{subject}|{window}|{T0 + start_min * MIN}"
    raw = store.get(key)
    assert raw is not None
    found = decode(key, raw)
    assert isinstance(found, WindowSlot)
    return found


def alerts_of(pending: list[Pending]) -> list[dict[str, Any]]:
    return [p.record.value for p in pending if p.record.kind == ALERTS]


def windows_of(pending: list[Pending]) -> list[dict[str, Any]]:
    return [p.record.value for p in pending if p.record.kind == WINDOWS]


def stored_outbox(store: JsonStore) -> list[Pending]:
    return [
        Pending(k, o) for k, raw in store.items() for o in getattr(decode(k, raw), "outbox", ())
    ]


def quota_of(pending: list[Pending]) -> dict[str, dict[str, Any]]:
    """The newest quota feed record of each key in `pending` (tombstones: see `removed`)."""
    out = {}
    for p in pending:
        if p.record.kind == QUOTA:
            out[p.record.key] = p.record.value
            if p.record.tombstone:
                del out[p.record.key]
    return out


def removed(pending: list[Pending]) -> list[str]:
    """Keys the quota feed records in `pending` remove (tombstones)."""
    return [p.record.key for p in pending if p.record.kind == QUOTA and p.record.tombstone]

"""What tests send and read: events, epoch-ms times, JSON, record headers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka.consumer.fetcher import ConsumerRecord

from meter.core.durations import DAY_MS, HOUR_MS, MINUTE_MS

__all__ = ["DAY_MS", "HOUR_MS", "MIN_MS", "Event", "dumps", "event", "header", "iso", "ms",
           "values_of"]  # fmt: skip

MIN_MS = MINUTE_MS
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Event = dict[str, Any]


def ms(text: str) -> int:
    """Epoch ms of an ISO date-time (UTC when no zone is given)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(milliseconds=1)


def iso(ms_: int) -> str:
    """The meter's RFC 3339 rendering: UTC, 'Z', milliseconds only when non-zero."""
    t = EPOCH + timedelta(milliseconds=ms_)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms_ % 1000:03d}Z" if ms_ % 1000 else f"{text}Z"


def header(record: ConsumerRecord, name: str) -> bytes | None:
    for key, value in record.headers or ():
        if key == name:
            return bytes(value) if value is not None else None
    return None


def event(
    eid: str,
    time_ms: int,
    app: str,
    *,
    records: int = 0,
    endpoint: str | None = None,
    status: int | None = None,
    org: str | None = None,
    recipient: str | None = None,
) -> Event:
    ev: Event = {"id": eid, "time": time_ms, "app_id": app, "records": records}
    if endpoint is not None:
        ev["endpoint"] = endpoint
    if status is not None:
        ev["status"] = status
    if org is not None:
        ev["org_id"] = org
    if recipient is not None:
        ev["recipient"] = recipient
    return ev


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def values_of(records: Iterable[ConsumerRecord]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]

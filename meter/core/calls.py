"""The value types of API-call events: `ApiCall` (one counted call), `Rejection` (why input was
not counted, with a stable reason code), `Decoded` (what a record held)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec

__all__ = [
    "MAX_BATCH",
    "MAX_RECORDS",
    "MAX_TIME_MS",
    "REASONS",
    "ApiCall",
    "Decoded",
    "Headers",
    "Rejection",
    "event_to_json",
]

MAX_BATCH = 10_000
MAX_RECORDS = 1_000_000_000
MAX_TIME_MS = 7_258_118_400_000  # 2200-01-01T00:00:00Z, exclusive

# Kafka header values may be null; Faust hands headers over as a mapping, aiokafka as pairs.
Headers = Sequence[tuple[str, bytes | None]] | Mapping[str, bytes | None]

# The stable rejection codes (metrics labels, dead-letter headers); see decode_record.
REASONS = frozenset({
    "empty", "not_utf8", "not_json", "wrong_type", "empty_batch", "batch_too_large",
    "missing_field", "bad_field", "too_long", "bad_time", "bad_cloudevent", "future_time",
    "too_late",
})  # fmt: skip
"""`future_time`: dated further ahead of its arrival than the allowed clock skew (the router);
`too_late`: older than the history horizon (the counter, `meter.core.ledger`)."""


class ApiCall(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One counted API call; `time_ms` is event time in epoch milliseconds UTC.

    A msgspec struct: built in C, without the garbage collector's tracking (its fields are
    never containers), and written on the routed topic as a msgpack array in field order."""

    id: str
    time_ms: int
    app_id: str
    org_id: str | None = None
    endpoint: str | None = None
    records: int = 0
    status: int = 200
    recipient: str | None = None
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record (index None) or one batch element (its index) was not counted."""

    reason: str
    detail: str
    index: int | None


@dataclass(frozen=True, slots=True)
class Decoded:
    """The valid events of a record, in order, and one rejection per invalid part."""

    events: list[ApiCall]
    rejections: list[Rejection]


def event_to_json(event: ApiCall) -> dict[str, object]:
    """The plain-event JSON object of `event`: time as epoch ms, None fields omitted."""
    out: dict[str, object] = {"id": event.id, "time": event.time_ms, "app_id": event.app_id}
    if event.org_id is not None:
        out["org_id"] = event.org_id
    if event.endpoint is not None:
        out["endpoint"] = event.endpoint
    out["records"] = event.records
    out["status"] = event.status
    if event.recipient is not None:
        out["recipient"] = event.recipient
    if event.user_id is not None:
        out["user_id"] = event.user_id
    return out

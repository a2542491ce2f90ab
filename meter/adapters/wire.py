"""Wire formats between the worker's two stages, and of the dead-letter topic.

Routed records carry already validated events of one organisation, as compact JSON arrays, and
their ingest time: the newest timestamp of the input records they came from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

from meter.core.events import ApiCall, Rejection

TICK = b'{"tick":1}'
MAX_DLQ_REASONS = 100


class Routed(NamedTuple):
    events: list[ApiCall]
    ingest_ms: int | None
    """None in records written before meter carried it: use the routed record's timestamp."""
    levels: list[str | None] | None = None
    """Per event: None (both subject levels), "app" or "org" (see `meter.core.ledger`); None when
    every event counts for both."""


def encode_routed(
    events: Sequence[ApiCall], ingest_ms: int, levels: Sequence[str | None] | None = None
) -> bytes:
    rows = [
        [
            e.id,
            e.time_ms,
            e.app_id,
            e.org_id,
            e.endpoint,
            e.records,
            e.status,
            e.recipient,
            e.user_id,
        ]
        for e in events
    ]
    doc: dict[str, object] = {"e": rows, "i": ingest_ms}
    if levels is not None and any(level is not None for level in levels):
        doc["l"] = list(levels)
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_routed(value: bytes) -> Routed | None:
    """A routed record's events and ingest time; None for a tick (a control record)."""
    doc = json.loads(value)
    rows = doc.get("e")
    if rows is None:
        return None
    return Routed([ApiCall(*row) for row in rows], doc.get("i"), doc.get("l"))


def dlq_headers(
    rejections: Sequence[Rejection], topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """Headers of a dead-letter record; its value is the original bytes, untouched."""
    first = rejections[0]
    listed = [
        {"index": r.index, "reason": r.reason, "detail": r.detail}
        for r in rejections[:MAX_DLQ_REASONS]
    ]
    return [
        ("meter-reason", first.reason.encode()),
        ("meter-detail", first.detail.encode()),
        ("meter-rejections", json.dumps(listed).encode()),
        ("meter-rejected-count", str(len(rejections)).encode()),
        ("meter-source-topic", topic.encode()),
        ("meter-source-partition", str(partition).encode()),
        ("meter-source-offset", str(offset).encode()),
    ]

"""Wire formats between the worker's two stages, and of the dead-letter topic.

A routed record is a msgpack array, one of:
- events `["e", [event, ...], ingest_ms, levels]`: already validated events of one organisation
  (each an array of `ApiCall`'s fields in order), with their ingest time (the newest timestamp of
  the input records they came from) and their subject levels (or nil);
- a progress report `["p", partitions, stamp_ms, {input partition: [watermark, idle]}]`: what one
  router knows of each input partition it reads, sent to every routed partition after the events
  it covers (`meter.core.ledger.progress`).
Records of earlier versions are JSON objects (`{"e": ...}`, `{"p": ...}` and the tick
`{"tick":1}`); they are still read, so a routed topic written before an upgrade drains.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import NamedTuple

import msgspec
from aiokafka.partitioner import murmur2

from meter.core.events import ApiCall, Rejection

TICK = b'{"tick":1}'
MAX_DLQ_REASONS = 100
MAX_RECORD_BYTES = 1_000_000
"""Largest record the worker writes: under the producer's request limit (1 MiB) and the broker's
default `max.message.bytes`, with room for the record's framing."""
MAX_ROUTED_BYTES = 512 * 1024
"""A routed record is cut into several when its events would encode to more than this."""
TRUNCATED_BYTES = 64 * 1024
"""How much of an oversized bad record its dead-letter copy keeps."""


def routed_partition(key: str, partitions: int) -> int:
    """The routed partition of a routing key (`org:<id>`, `app:<id>`): where Kafka's default
    partitioner puts that key, so a subject's state stays where earlier versions kept it."""
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def ingest_time(timestamp_ms: int | None, now_ms: int) -> int:
    """When an input record reached Kafka (its timestamp), never later than now: a producer
    with a clock running ahead must not make the dedup memory forget ids early."""
    if timestamp_ms is None or timestamp_ms < 0:
        return now_ms
    return min(timestamp_ms, now_ms)


class Report(NamedTuple):
    """A router's progress report: input partitions in all, its clock, and per input partition
    it reads: (newest event time routed or None, idle)."""

    partitions: int
    stamp_ms: int
    sources: dict[int, tuple[int | None, bool]]


class _Events(msgspec.Struct, array_like=True, tag="e"):
    events: list[ApiCall]
    ingest_ms: int | None
    levels: list[str | None] | None = None


class _Report(msgspec.Struct, array_like=True, tag="p"):
    partitions: int
    stamp_ms: int
    sources: dict[int, tuple[int | None, bool]]


_ENCODE = msgspec.msgpack.Encoder().encode
_DECODE = msgspec.msgpack.Decoder(_Events | _Report).decode


def encode_report(report: Report) -> bytes:
    return _ENCODE(_Report(report.partitions, report.stamp_ms, dict(report.sources)))


class Routed(NamedTuple):
    events: list[ApiCall]
    ingest_ms: int | None
    """None in records written before meter carried it: use the routed record's timestamp."""
    levels: list[str | None] | None = None
    """Per event: None (both subject levels), "app" or "org" (see `meter.core.ledger`); None when
    every event counts for both."""


def encode_routed_chunks(
    events: Sequence[ApiCall],
    ingest_ms: int,
    levels: Sequence[str | None] | None = None,
    max_bytes: int = MAX_ROUTED_BYTES,
) -> list[bytes]:
    """The events as routed records of at most `max_bytes` each (one record when they fit)."""
    value = encode_routed(events, ingest_ms, levels)
    if len(value) <= max_bytes or len(events) == 1:
        return [value]
    half = len(events) // 2
    return encode_routed_chunks(
        events[:half], ingest_ms, levels[:half] if levels else None, max_bytes
    ) + encode_routed_chunks(events[half:], ingest_ms, levels[half:] if levels else None, max_bytes)


def encode_routed(
    events: Sequence[ApiCall], ingest_ms: int, levels: Sequence[str | None] | None = None
) -> bytes:
    kept = list(levels) if levels is not None and any(lv is not None for lv in levels) else None
    return _ENCODE(_Events(list(events), ingest_ms, kept))


def decode_routed(value: bytes) -> Routed | Report | None:
    """A routed record's events and ingest time, or a progress report; None for a tick."""
    if value[:1] == b"{":
        return _decode_json(value)
    found = _DECODE(value)
    if isinstance(found, _Events):
        return Routed(found.events, found.ingest_ms, found.levels)
    return Report(found.partitions, found.stamp_ms, found.sources)


def _decode_json(value: bytes) -> Routed | Report | None:
    """A routed record of an earlier version (JSON)."""
    doc = json.loads(value)
    rows = doc.get("e")
    if rows is not None:
        return Routed([ApiCall(*row) for row in rows], doc.get("i"), doc.get("l"))
    progress = doc.get("p")
    if progress is not None:
        sources = {int(p): (wm, bool(idle)) for p, (wm, idle) in progress["s"].items()}
        return Report(progress["n"], progress["t"], sources)
    return None


class DeadLetter(NamedTuple):
    key: bytes
    value: bytes | None
    headers: list[tuple[str, bytes]]


def dead_letter(
    value: bytes | None, rejections: Sequence[Rejection], topic: str, partition: int, offset: int
) -> DeadLetter:
    """The dead-letter record of a rejected input record: its original bytes, untouched, with
    headers saying why. A copy that would exceed `MAX_RECORD_BYTES` (the input may be just under
    the broker's limit, and the headers add to it) keeps only the first `TRUNCATED_BYTES`, and
    headers give the original's size and SHA-256: it can always be written."""
    first = rejections[0]
    listed = [
        {"index": r.index, "reason": r.reason, "detail": r.detail}
        for r in rejections[:MAX_DLQ_REASONS]
    ]
    key = f"{topic}:{partition}:{offset}".encode()
    headers = [
        ("meter-reason", first.reason.encode()),
        ("meter-detail", first.detail.encode()),
        ("meter-rejections", json.dumps(listed).encode()),
        ("meter-rejected-count", str(len(rejections)).encode()),
        ("meter-source-topic", topic.encode()),
        ("meter-source-partition", str(partition).encode()),
        ("meter-source-offset", str(offset).encode()),
    ]
    size = len(key) + len(value or b"") + sum(len(k) + len(v) + 8 for k, v in headers) + 128
    if value is not None and size > MAX_RECORD_BYTES:
        headers += [
            ("meter-truncated", b"true"),
            ("meter-original-bytes", str(len(value)).encode()),
            ("meter-original-sha256", hashlib.sha256(value).hexdigest().encode()),
        ]
        value = value[:TRUNCATED_BYTES]
    return DeadLetter(key, value, headers)

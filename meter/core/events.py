"""Decoding API-call events from Kafka record values: plain JSON events, batches and CloudEvents
1.0 (`meter.core.cloudevents`); fields are validated by `meter.core.event_fields`. Bad input never
raises: it becomes `Rejection`s.
"""

from __future__ import annotations

import json

from meter.core.calls import (
    MAX_BATCH,
    REASONS,
    ApiCall,
    Decoded,
    Headers,
    Rejection,
    event_to_json,
)
from meter.core.cloudevents import binary, ce_headers, structured
from meter.core.errors import EventError
from meter.core.event_fields import PLAIN_NAMES, format_ms, make_call, parse_time, show

__all__ = [
    "MAX_BATCH",
    "REASONS",
    "ApiCall",
    "Decoded",
    "Headers",
    "Rejection",
    "decode_record",
    "event_to_json",
    "parse_time",
]


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


# One shared decoder: json.loads with keyword arguments would build a new decoder per call.
_DECODE = json.JSONDecoder(parse_constant=_no_constants).decode


def _reject(reason: str, detail: str) -> Decoded:
    return Decoded([], [Rejection(reason, detail, None)])


def decode_record(
    value: bytes | None, headers: Headers = (), latest_ms: int | None = None
) -> Decoded:
    """Decodes one Kafka record value (plain event, batch array or CloudEvent); never raises.

    `headers` are the record's headers (pairs or a mapping; None values are absent headers).
    An event dated after `latest_ms` (when given) is rejected as `future_time`: its clock is
    wrong, and it must not move event time for everyone else.
    """
    decoded = _decode(value, headers)
    if latest_ms is not None and any(ev.time_ms > latest_ms for ev in decoded.events):
        return _without_future(value, decoded, latest_ms)
    return decoded


def _without_future(value: bytes | None, decoded: Decoded, latest_ms: int) -> Decoded:
    """`decoded` with the events dated after `latest_ms` turned into rejections (at their index
    in a batch)."""
    batch = value is not None and value.lstrip()[:1] == b"["
    events: list[ApiCall] = []
    rejections = list(decoded.rejections)
    rejected = {r.index for r in rejections}
    indexes = (i for i in range(len(decoded.events) + len(rejected)) if i not in rejected)
    for ev in decoded.events:
        index = next(indexes) if batch else None
        if ev.time_ms <= latest_ms:
            events.append(ev)
            continue
        detail = (
            f"time {format_ms(ev.time_ms)} is more than the allowed clock skew ahead of when the "
            f"record reached Kafka (accepted up to {format_ms(latest_ms)})"
        )
        rejections.append(Rejection("future_time", detail, index))
    rejections.sort(key=lambda r: -1 if r.index is None else r.index)
    return Decoded(events, rejections)


def _decode(value: bytes | None, headers: Headers) -> Decoded:
    if value is None:
        return _reject("empty", "record value is null")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _reject("not_utf8", f"record value is not valid UTF-8 at byte {exc.start}")
    if not text or text.isspace():
        return _reject("empty", "record value is empty")
    try:
        doc: object = _DECODE(text)
    except json.JSONDecodeError as exc:
        return _reject("not_json", f"record value is not JSON: {exc}")
    except (ValueError, RecursionError) as exc:
        # NaN/Infinity, integers over the digit limit, nesting deeper than the stack.
        return _reject("not_json", f"record value is not JSON: {type(exc).__name__}: {exc}")
    found = ce_headers(headers) if headers else None
    if found is not None:
        try:
            return Decoded([binary(found, doc)], [])
        except EventError as exc:
            return _reject(exc.reason, exc.detail)
    if type(doc) is dict:
        try:
            if "specversion" in doc:
                event = structured(doc)
            else:
                event = make_call(
                    doc.get("id"), doc.get("time"), doc.get("app_id"), doc, PLAIN_NAMES
                )
        except EventError as exc:
            return _reject(exc.reason, exc.detail)
        return Decoded([event], [])
    if type(doc) is list:
        return _batch(doc)
    return _reject("wrong_type", f"record value must be a JSON object or array, got {show(doc)}")


def _batch(items: list[object]) -> Decoded:
    count = len(items)
    if count == 0:
        return _reject("empty_batch", "batch array is empty")
    if count > MAX_BATCH:
        return _reject("batch_too_large", f"batch has {count} elements, at most {MAX_BATCH}")
    events: list[ApiCall] = []
    rejections: list[Rejection] = []
    append = events.append
    names = PLAIN_NAMES
    for index, item in enumerate(items):
        if type(item) is not dict:
            detail = f"batch element must be a JSON object, got {show(item)}"
            rejections.append(Rejection("wrong_type", detail, index))
            continue
        try:
            if "specversion" in item:
                append(structured(item))
            else:
                append(make_call(item.get("id"), item.get("time"), item.get("app_id"), item, names))
        except EventError as exc:
            rejections.append(Rejection(exc.reason, exc.detail, index))
    return Decoded(events, rejections)

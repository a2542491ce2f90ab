"""Decoding API-call events from Kafka record values: plain JSON events, batches and CloudEvents
1.0 (`meter.core.cloudevents`); fields are validated by `meter.core.event_fields`. Bad input never
raises: it becomes `Rejection`s.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from meter.core.calls import (
    MAX_BATCH,
    MAX_RECORDS,
    MAX_TIME_MS,
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


class _HugeInt:
    """An integer literal longer than Python converts (4,300 digits). It is valid JSON: in a
    field meter ignores it changes nothing (as on the fast path), in any other it is a bad value."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"an integer of {self.digits} digits"


def _int(text: str) -> object:
    try:
        return int(text)
    except ValueError:
        return _HugeInt(len(text.lstrip("-")))


# One shared decoder: json.loads with keyword arguments would build a new decoder per call.
_DECODE = json.JSONDecoder(parse_constant=_no_constants, parse_int=_int).decode


class _Plain(msgspec.Struct):
    """The shape of a plain event, for the fast path: msgspec decodes and type-checks it in C.
    Anything it does not accept goes the slow path, which gives the exact rejection."""

    id: str
    time: int | str
    app_id: str
    org_id: str | None = None
    endpoint: str | None = None
    records: int = 0
    status: int = 200
    recipient: str | None = None
    user_id: str | None = None
    specversion: Any = msgspec.UNSET


_FAST_ONE = msgspec.json.Decoder(_Plain).decode
_FAST_MANY = msgspec.json.Decoder(list[_Plain]).decode
# RecursionError: nesting deeper than the stack, even in a field msgspec only skips.
_FAST_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


def _fast(value: bytes) -> Decoded | None:
    """The events of a record of valid plain events, decoded in one pass; None for anything
    else (an invalid field, a CloudEvent, odd JSON), which `_decode` then handles as before."""
    first = value[:1]
    if not value.isascii() and not _utf8(value):
        return None  # msgspec does not check the UTF-8 of the values it skips
    try:
        if first == b"{":
            items = [_FAST_ONE(value)]
        elif first == b"[":
            items = _FAST_MANY(value)
            if not 0 < len(items) <= MAX_BATCH:
                return None
        else:
            return None
    except _FAST_ERRORS:
        return None
    events = []
    for p in items:
        # make_call's fast-path checks, exactly: any other value takes the slow path
        id_, app, time_ = p.id, p.app_id, p.time
        if p.specversion is not msgspec.UNSET:
            return None
        if not (0 < len(id_) <= 128 and id_.isascii() and 0 < len(app) <= 128 and app.isascii()):
            return None
        if type(time_) is int:
            if not 0 <= time_ < MAX_TIME_MS:
                return None
        else:
            try:
                time_ = parse_time(time_)
            except EventError:
                return None
        org, endpoint, recipient, user = p.org_id, p.endpoint, p.recipient, p.user_id
        if not (
            (org is None or (0 < len(org) <= 128 and org.isascii()))
            and (endpoint is None or (0 < len(endpoint) <= 256 and endpoint.isascii()))
            and (recipient is None or (0 < len(recipient) <= 64 and recipient.isascii()))
            and (user is None or (0 < len(user) <= 128 and user.isascii()))
            and 0 <= p.records <= MAX_RECORDS
            and 100 <= p.status <= 599
        ):
            return None
        events.append(ApiCall(id_, time_, app, org, endpoint, p.records, p.status, recipient, user))
    return Decoded(events, [])


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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
    fast = _fast(value) if value and not (headers and ce_headers(headers)) else None
    decoded = fast if fast is not None else _decode(value, headers)
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

"""Decoding and validation of API-call events from Kafka record values.

Plain JSON events, batches and CloudEvents 1.0; bad input never raises, it becomes `Rejection`s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from meter.core.errors import EventError

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


@dataclass(frozen=True, slots=True)
class ApiCall:
    """One counted API call; `time_ms` is event time in epoch milliseconds UTC."""

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


# The frozen dataclass __init__ sets every field through object.__setattr__; _make uses the
# slot descriptors directly, twice as fast. test_events.py checks the field list stays in step.
_SLOT_NAMES = (
    "id", "time_ms", "app_id", "org_id", "endpoint", "records", "status", "recipient", "user_id",
)  # fmt: skip
_new = object.__new__
(
    _set_id, _set_time, _set_app, _set_org, _set_endpoint,
    _set_records, _set_status, _set_recipient, _set_user,
) = (ApiCall.__dict__[name].__set__ for name in _SLOT_NAMES)  # fmt: skip
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_TIME_HINT = "an RFC 3339 string with a zone (e.g. 2022-03-01T12:00:00Z) or integer epoch ms"


def _show(value: object) -> str:
    """A short JSON-flavoured rendering of a value for a rejection detail, bounded in size."""
    # Containers are named, not printed: they may be huge or deeply nested.
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is dict:
        return "an object"
    if type(value) is list:
        return "an array"
    if type(value) is str:
        return repr(value if len(value) <= 40 else value[:40] + "...")
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _bad_time(detail: str) -> EventError:
    return EventError("bad_time", detail)


def _parse_rfc3339(text: str) -> int:
    n = len(text)
    # fromisoformat accepts far more than RFC 3339 (any separator, basic format, no zone):
    # check the shape first so only RFC 3339 date-times get through.
    if not (20 <= n <= 64 and text.isascii() and text[4] == text[7] == "-" and text[10] in "Tt"):
        raise _bad_time(f"expected {_TIME_HINT}, got {_show(text)}")
    if text[13] != ":" or text[16] != ":":
        raise _bad_time(f"expected {_TIME_HINT}, got {_show(text)}")
    last = text[-1]
    if last in "Zz":
        frac = text[19:-1]
    elif n >= 25 and text[-6] in "+-" and text[-3] == ":":
        frac = text[19:-6]
    else:
        raise _bad_time(f"timestamp must end with Z or a +HH:MM offset, got {_show(text)}")
    if frac and (frac[0] != "." or not frac[1:].isdigit()):
        raise _bad_time(f"expected {_TIME_HINT}, got {_show(text)}")
    if text[10] == "t" or last == "z":
        text = text.upper()  # fromisoformat in 3.11 only knows upper-case T and Z
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _bad_time(f"invalid timestamp {_show(text)}: {exc}") from None
    if moment.tzinfo is None or not 1969 <= moment.year <= 2200:
        raise _bad_time(f"timestamp must be in [1970-01-01, 2200-01-01), got {_show(text)}")
    ms = (moment - _EPOCH) // _ONE_MS
    if not 0 <= ms < MAX_TIME_MS:
        raise _bad_time(f"timestamp must be in [1970-01-01, 2200-01-01), got {_show(text)}")
    return ms


def parse_time(value: object) -> int:
    """Epoch milliseconds UTC of an RFC 3339 string (zone required) or an integer of epoch ms.

    Accepts [1970-01-01, 2200-01-01) only; anything else raises `EventError("bad_time", ...)`.
    """
    if type(value) is int:
        if 0 <= value < MAX_TIME_MS:
            return value
        raise _bad_time(f"epoch milliseconds must be in 0..{MAX_TIME_MS - 1}, got {value}")
    if type(value) is str:
        return _parse_rfc3339(value)
    raise _bad_time(f"expected {_TIME_HINT}, got {_show(value)}")


def _string(value: object, name: str, limit: int) -> str:
    """Slow path of the string checks in _make: returns `value` if valid after all, else raises."""
    if value is None:
        raise EventError("missing_field", f"{name} is required")
    if type(value) is not str:
        raise EventError("bad_field", f"{name} must be a string, got {_show(value)}")
    if not value:
        raise EventError("bad_field", f"{name} must be a non-empty string, got ''")
    if len(value) > limit:
        raise EventError("too_long", f"{name} must be at most {limit} characters, got {len(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate would make every later UTF-8 encode (keys, alerts) fail downstream.
        raise EventError(
            "bad_field", f"{name} must be valid Unicode (no lone surrogates)"
        ) from None
    return value


def _time(value: object, name: str) -> int:
    if value is None:
        raise EventError("missing_field", f"{name} is required")
    try:
        return parse_time(value)
    except EventError as exc:
        raise EventError("bad_time", f"{name}: {exc.detail}") from None


def _records(value: object) -> int:
    if value is None:
        return 0
    if type(value) is not int or value < 0:
        raise EventError(
            "bad_field", f"field 'records' must be an integer >= 0, got {_show(value)}"
        )
    raise EventError(
        "bad_field", f"field 'records' must be an integer <= {MAX_RECORDS}, got {value}"
    )


def _status(value: object) -> int:
    if value is None:
        return 200
    raise EventError(
        "bad_field",
        f"field 'status' must be an integer HTTP status in 100..599, got {_show(value)}",
    )


_PLAIN_NAMES = ("field 'id'", "field 'time'", "field 'app_id'")


def _make(
    id_: object, time_: object, app: object, d: dict[str, object], names: tuple[str, str, str]
) -> ApiCall:
    """Validates one event; the common valid case costs only the inline `type() is` checks."""
    if not (type(id_) is str and 0 < len(id_) <= 128 and id_.isascii()):
        id_ = _string(id_, names[0], 128)
    if not (type(time_) is int and 0 <= time_ < MAX_TIME_MS):
        time_ = _time(time_, names[1])
    if not (type(app) is str and 0 < len(app) <= 128 and app.isascii()):
        app = _string(app, names[2], 128)
    get = d.get
    org = get("org_id")
    if not (org is None or (type(org) is str and 0 < len(org) <= 128 and org.isascii())):
        org = _string(org, "field 'org_id'", 128)
    endpoint = get("endpoint")
    if not (
        endpoint is None
        or (type(endpoint) is str and 0 < len(endpoint) <= 256 and endpoint.isascii())
    ):
        endpoint = _string(endpoint, "field 'endpoint'", 256)
    records = get("records", 0)
    if not (type(records) is int and 0 <= records <= MAX_RECORDS):
        records = _records(records)
    status = get("status", 200)
    if not (type(status) is int and 100 <= status <= 599):
        status = _status(status)
    recipient = get("recipient")
    if not (
        recipient is None
        or (type(recipient) is str and 0 < len(recipient) <= 64 and recipient.isascii())
    ):
        recipient = _string(recipient, "field 'recipient'", 64)
    user = get("user_id")
    if not (user is None or (type(user) is str and 0 < len(user) <= 128 and user.isascii())):
        user = _string(user, "field 'user_id'", 128)
    call = _new(ApiCall)
    _set_id(call, id_)
    _set_time(call, time_)
    _set_app(call, app)
    _set_org(call, org)
    _set_endpoint(call, endpoint)
    _set_records(call, records)
    _set_status(call, status)
    _set_recipient(call, recipient)
    _set_user(call, user)
    return call


def _bad_ce(detail: str) -> EventError:
    return EventError("bad_cloudevent", detail)


def _structured(ce: dict[str, object]) -> ApiCall:
    """A CloudEvents 1.0 structured-mode event: attributes id/time/subject win over `data`."""
    version = ce.get("specversion")
    if version != "1.0":
        raise _bad_ce(f"attribute 'specversion' must be \"1.0\", got {_show(version)}")
    for attr in ("id", "source", "type"):
        value = ce.get(attr)
        if type(value) is not str or not value:
            raise _bad_ce(f"attribute '{attr}' must be a non-empty string, got {_show(value)}")
    data = ce.get("data")
    if type(data) is not dict:
        raise _bad_ce(f"attribute 'data' must be a JSON object, got {_show(data)}")
    time_ = ce.get("time")
    time_name = "attribute 'time'"
    if time_ is None:
        time_, time_name = data.get("time"), "field 'time'"
    app = ce.get("subject")
    app_name = "attribute 'subject'"
    if app is None:
        app, app_name = data.get("app_id"), "field 'app_id' (or attribute 'subject')"
    return _make(ce["id"], time_, app, data, ("attribute 'id'", time_name, app_name))


def _ce_headers(headers: Headers) -> dict[str, bytes | None] | None:
    """The `ce_*` headers, lower-cased, if the record is in CloudEvents binary mode."""
    found: dict[str, bytes | None] | None = None
    for key, raw in headers.items() if isinstance(headers, Mapping) else headers:
        if type(key) is str and key[:3].lower() == "ce_":
            if found is None:
                found = {}
            found[key.lower()] = raw  # a repeated header: the last one wins
    if found is None or "ce_specversion" not in found:
        return None
    return found


def _header(found: dict[str, bytes | None], name: str) -> str | None:
    raw = found.get(name)
    if raw is None:
        return None
    try:
        return str(raw, "utf-8")
    except (UnicodeDecodeError, TypeError):
        raise _bad_ce(f"header '{name}' is not valid UTF-8") from None


def _binary(found: dict[str, bytes | None], doc: object) -> ApiCall:
    """A CloudEvents 1.0 binary-mode event: headers ce_id/ce_time/ce_subject win over the value."""
    version = _header(found, "ce_specversion")
    if version != "1.0":
        raise _bad_ce(f"header 'ce_specversion' must be \"1.0\", got {_show(version)}")
    for name in ("ce_id", "ce_source", "ce_type"):
        if not _header(found, name):
            raise _bad_ce(f"header '{name}' is required and must be non-empty")
    if type(doc) is list:
        raise _bad_ce("a binary-mode CloudEvent carries one event, got a JSON array")
    if type(doc) is not dict:
        raise EventError("wrong_type", f"record value must be a JSON object, got {_show(doc)}")
    time_: object = _header(found, "ce_time")
    time_name = "header 'ce_time'"
    if time_ is None:
        time_, time_name = doc.get("time"), "field 'time'"
    app: object = _header(found, "ce_subject")
    app_name = "header 'ce_subject'"
    if app is None:
        app, app_name = doc.get("app_id"), "field 'app_id' (or header 'ce_subject')"
    return _make(_header(found, "ce_id"), time_, app, doc, ("header 'ce_id'", time_name, app_name))


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
            f"time {_format_ms(ev.time_ms)} is more than the allowed clock skew ahead of when the "
            f"record reached Kafka (accepted up to {_format_ms(latest_ms)})"
        )
        rejections.append(Rejection("future_time", detail, index))
    rejections.sort(key=lambda r: -1 if r.index is None else r.index)
    return Decoded(events, rejections)


def _format_ms(ms: int) -> str:
    t = _EPOCH + timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


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
    found = _ce_headers(headers) if headers else None
    if found is not None:
        try:
            return Decoded([_binary(found, doc)], [])
        except EventError as exc:
            return _reject(exc.reason, exc.detail)
    if type(doc) is dict:
        try:
            if "specversion" in doc:
                event = _structured(doc)
            else:
                event = _make(doc.get("id"), doc.get("time"), doc.get("app_id"), doc, _PLAIN_NAMES)
        except EventError as exc:
            return _reject(exc.reason, exc.detail)
        return Decoded([event], [])
    if type(doc) is list:
        return _batch(doc)
    return _reject("wrong_type", f"record value must be a JSON object or array, got {_show(doc)}")


def _batch(items: list[object]) -> Decoded:
    count = len(items)
    if count == 0:
        return _reject("empty_batch", "batch array is empty")
    if count > MAX_BATCH:
        return _reject("batch_too_large", f"batch has {count} elements, at most {MAX_BATCH}")
    events: list[ApiCall] = []
    rejections: list[Rejection] = []
    append = events.append
    names = _PLAIN_NAMES
    for index, item in enumerate(items):
        if type(item) is not dict:
            detail = f"batch element must be a JSON object, got {_show(item)}"
            rejections.append(Rejection("wrong_type", detail, index))
            continue
        try:
            if "specversion" in item:
                append(_structured(item))
            else:
                append(_make(item.get("id"), item.get("time"), item.get("app_id"), item, names))
        except EventError as exc:
            rejections.append(Rejection(exc.reason, exc.detail, index))
    return Decoded(events, rejections)


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

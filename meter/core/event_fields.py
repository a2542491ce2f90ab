"""Validation of one event's fields into an `ApiCall`: the fast path costs only inline `type()`
checks; anything off raises `EventError` with a stable reason and a detail naming the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from meter.core.calls import MAX_RECORDS, MAX_TIME_MS, ApiCall
from meter.core.errors import EventError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_TIME_HINT = "an RFC 3339 string with a zone (e.g. 2022-03-01T12:00:00Z) or integer epoch ms"


def show(value: object) -> str:
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
        raise _bad_time(f"expected {_TIME_HINT}, got {show(text)}")
    if text[13] != ":" or text[16] != ":":
        raise _bad_time(f"expected {_TIME_HINT}, got {show(text)}")
    last = text[-1]
    if last in "Zz":
        frac = text[19:-1]
    elif n >= 25 and text[-6] in "+-" and text[-3] == ":":
        frac = text[19:-6]
    else:
        raise _bad_time(f"timestamp must end with Z or a +HH:MM offset, got {show(text)}")
    if frac and (frac[0] != "." or not frac[1:].isdigit()):
        raise _bad_time(f"expected {_TIME_HINT}, got {show(text)}")
    if text[10] == "t" or last == "z":
        text = text.upper()  # fromisoformat in 3.11 only knows upper-case T and Z
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _bad_time(f"invalid timestamp {show(text)}: {exc}") from None
    if moment.tzinfo is None or not 1969 <= moment.year <= 2200:
        raise _bad_time(f"timestamp must be in [1970-01-01, 2200-01-01), got {show(text)}")
    ms = (moment - _EPOCH) // _ONE_MS
    if not 0 <= ms < MAX_TIME_MS:
        raise _bad_time(f"timestamp must be in [1970-01-01, 2200-01-01), got {show(text)}")
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
    raise _bad_time(f"expected {_TIME_HINT}, got {show(value)}")


def _string(value: object, name: str, limit: int) -> str:
    """Slow path of make_call's string checks: `value` if valid after all, else it raises."""
    if value is None:
        raise EventError("missing_field", f"{name} is required")
    if type(value) is not str:
        raise EventError("bad_field", f"{name} must be a string, got {show(value)}")
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
        raise EventError("bad_field", f"field 'records' must be an integer >= 0, got {show(value)}")
    raise EventError(
        "bad_field", f"field 'records' must be an integer <= {MAX_RECORDS}, got {value}"
    )


def _status(value: object) -> int:
    if value is None:
        return 200
    raise EventError(
        "bad_field",
        f"field 'status' must be an integer HTTP status in 100..599, got {show(value)}",
    )


PLAIN_NAMES = ("field 'id'", "field 'time'", "field 'app_id'")


def make_call(
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
    return ApiCall(id_, time_, app, org, endpoint, records, status, recipient, user)


def format_ms(ms: int) -> str:
    t = _EPOCH + timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")

"""CloudEvents 1.0 in their two Kafka modes: structured (the event JSON in the value, our fields in
`data`) and binary (`ce_*` headers, our fields in the value)."""

from __future__ import annotations

from collections.abc import Mapping

from meter.core.calls import ApiCall, Headers
from meter.core.errors import EventError
from meter.core.event_fields import make_call, show


def _bad_ce(detail: str) -> EventError:
    return EventError("bad_cloudevent", detail)


def structured(ce: dict[str, object]) -> ApiCall:
    """A CloudEvents 1.0 structured-mode event: attributes id/time/subject win over `data`."""
    version = ce.get("specversion")
    if version != "1.0":
        raise _bad_ce(f"attribute 'specversion' must be \"1.0\", got {show(version)}")
    for attr in ("id", "source", "type"):
        value = ce.get(attr)
        if type(value) is not str or not value:
            raise _bad_ce(f"attribute '{attr}' must be a non-empty string, got {show(value)}")
    data = ce.get("data")
    if type(data) is not dict:
        raise _bad_ce(f"attribute 'data' must be a JSON object, got {show(data)}")
    time_ = ce.get("time")
    time_name = "attribute 'time'"
    if time_ is None:
        time_, time_name = data.get("time"), "field 'time'"
    app = ce.get("subject")
    app_name = "attribute 'subject'"
    if app is None:
        app, app_name = data.get("app_id"), "field 'app_id' (or attribute 'subject')"
    return make_call(ce["id"], time_, app, data, ("attribute 'id'", time_name, app_name))


def ce_headers(headers: Headers) -> dict[str, bytes | None] | None:
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


def binary(found: dict[str, bytes | None], doc: object) -> ApiCall:
    """A CloudEvents 1.0 binary-mode event: headers ce_id/ce_time/ce_subject win over the value."""
    version = _header(found, "ce_specversion")
    if version != "1.0":
        raise _bad_ce(f"header 'ce_specversion' must be \"1.0\", got {show(version)}")
    for name in ("ce_id", "ce_source", "ce_type"):
        if not _header(found, name):
            raise _bad_ce(f"header '{name}' is required and must be non-empty")
    if type(doc) is list:
        raise _bad_ce("a binary-mode CloudEvent carries one event, got a JSON array")
    if type(doc) is not dict:
        raise EventError("wrong_type", f"record value must be a JSON object, got {show(doc)}")
    time_: object = _header(found, "ce_time")
    time_name = "header 'ce_time'"
    if time_ is None:
        time_, time_name = doc.get("time"), "field 'time'"
    app: object = _header(found, "ce_subject")
    app_name = "header 'ce_subject'"
    if app is None:
        app, app_name = doc.get("app_id"), "field 'app_id' (or header 'ce_subject')"
    return make_call(
        _header(found, "ce_id"), time_, app, doc, ("header 'ce_id'", time_name, app_name)
    )

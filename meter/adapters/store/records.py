"""The records the store reads, checked and typed: window totals (`schemas/window.schema.json`)
and alerts (`schemas/alert.schema.json`). A record that does not fit raises `RecordError`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from meter.core.errors import MeterError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

COMPLETE = "complete"
EXPIRED = "expired"
SUBJECT_TYPES = ("app", "org")


class RecordError(MeterError):
    """A record on an output topic is not a valid window total or alert (kept, not applied)."""


@dataclass(frozen=True, slots=True)
class Consumed:
    """One record as read from Kafka."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Cell:
    name: str
    calls: int
    records: int


@dataclass(frozen=True, slots=True)
class CapUse:
    cap: str
    metric: str
    limit: int
    used: int
    utilization: float


@dataclass(frozen=True, slots=True)
class WindowRecord:
    """One window record: the totals of one subject in one window at one revision."""

    id: str
    subject_type: str
    subject: str
    org_id: str | None
    window_size: str
    window_start: int
    window_end: int
    revision: int
    base: str
    calls: int
    records: int
    endpoints: tuple[Cell, ...]
    recipients: tuple[Cell, ...]
    caps: tuple[CapUse, ...]
    late_events: int
    emitted_at: int
    payload: str
    payload_sha256: str

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.subject_type, self.subject, self.window_size, self.window_start)


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert, with every field of the schema."""

    id: str
    kind: str
    severity: str
    subject_type: str
    subject: str
    org_id: str | None
    cap: str | None
    metric: str
    window_size: str
    window_start: int
    window_end: int
    limit: int | None
    used: int
    threshold: float | None
    utilization: float | None
    crossed_at: int
    emitted_at: int
    late: bool
    event_id: str
    app_id: str | None
    recipient: str | None
    rule: str | None
    payload: str
    payload_sha256: str


def epoch_ms(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 date-time with a zone."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return (moment - _EPOCH) // _ONE_MS


class _Fields:
    """Typed access to a JSON object's fields; a wrong one raises `RecordError` naming it."""

    def __init__(self, data: Any, where: str = "") -> None:
        if not isinstance(data, dict):
            raise RecordError(f"{where or 'the record'} is not a JSON object")
        self.data = data
        self.where = where

    def raw(self, name: str) -> Any:
        if name not in self.data:
            raise RecordError(f"missing field {self.where}{name}")
        return self.data[name]

    def _bad(self, name: str, what: str) -> RecordError:
        return RecordError(f"field {self.where}{name} must be {what}")

    def text(self, name: str) -> str:
        value = self.raw(name)
        if not isinstance(value, str):
            raise self._bad(name, "a string")
        return value

    def optional_text(self, name: str) -> str | None:
        return None if self.data.get(name) is None else self.text(name)

    def integer(self, name: str, *, minimum: int | None = 0) -> int:
        value = self.raw(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, "an integer")
        if minimum is not None and value < minimum:
            raise self._bad(name, f"at least {minimum}")
        return value

    def optional_integer(self, name: str) -> int | None:
        return None if self.data.get(name) is None else self.integer(name, minimum=None)

    def number(self, name: str) -> float:
        value = self.raw(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(name, "a number")
        return float(value)

    def optional_number(self, name: str) -> float | None:
        return None if self.data.get(name) is None else self.number(name)

    def flag(self, name: str) -> bool:
        value = self.raw(name)
        if not isinstance(value, bool):
            raise self._bad(name, "true or false")
        return value

    def choice(self, name: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name)
        if value not in allowed:
            raise self._bad(name, f"one of {', '.join(allowed)}")
        return value

    def time(self, name: str) -> int:
        try:
            return epoch_ms(self.text(name))
        except ValueError:
            raise self._bad(name, "an RFC 3339 date-time with a zone") from None

    def window(self) -> tuple[str, int, int]:
        w = _Fields(self.raw("window"), "window.")
        start, end = w.time("start"), w.time("end")
        if end <= start:
            raise RecordError("window.end must be after window.start")
        return w.text("size"), start, end


def _decode(value: bytes | None) -> tuple[Any, str, str]:
    if value is None:
        raise RecordError("empty record (no value)")
    try:
        text = value.decode("utf-8")
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"not JSON: {exc}") from None
    return data, text, hashlib.sha256(value).hexdigest()


def _cells(data: Any, name: str) -> tuple[Cell, ...]:
    if not isinstance(data, dict):
        raise RecordError(f"field {name} must be an object")
    cells = []
    for key, cell in sorted(data.items()):
        f = _Fields(cell, f"{name}.{key}.")
        cells.append(Cell(str(key), f.integer("calls"), f.integer("records")))
    return tuple(cells)


def _caps(data: Any) -> tuple[CapUse, ...]:
    if not isinstance(data, list):
        raise RecordError("field caps must be an array")
    caps = []
    for i, cap in enumerate(data):
        f = _Fields(cap, f"caps[{i}].")
        caps.append(CapUse(f.text("cap"), f.text("metric"), f.integer("limit", minimum=None),
                           f.integer("used", minimum=None), f.number("utilization")))  # fmt: skip
    return tuple(caps)


def parse_window_record(value: bytes | None) -> WindowRecord:
    data, text, sha = _decode(value)
    f = _Fields(data)
    size, start, end = f.window()
    return WindowRecord(
        id=f.text("id"),
        subject_type=f.choice("subject_type", SUBJECT_TYPES),
        subject=f.text("subject"),
        org_id=f.optional_text("org_id"),
        window_size=size,
        window_start=start,
        window_end=end,
        revision=f.integer("revision"),
        base=f.choice("base", (COMPLETE, EXPIRED)),
        calls=f.integer("calls"),
        records=f.integer("records"),
        endpoints=_cells(f.raw("endpoints"), "endpoints"),
        # Workers before the recipients breakdown (the first window schema) sent none.
        recipients=_cells(f.data.get("recipients", {}), "recipients"),
        caps=_caps(f.raw("caps")),
        late_events=f.integer("late_events"),
        emitted_at=f.time("emitted_at"),
        payload=text,
        payload_sha256=sha,
    )


def parse_alert_record(value: bytes | None) -> AlertRecord:
    data, text, sha = _decode(value)
    f = _Fields(data)
    size, start, end = f.window()
    return AlertRecord(
        id=f.text("id"),
        kind=f.text("kind"),
        severity=f.text("severity"),
        subject_type=f.choice("subject_type", SUBJECT_TYPES),
        subject=f.text("subject"),
        org_id=f.optional_text("org_id"),
        cap=f.optional_text("cap"),
        metric=f.text("metric"),
        window_size=size,
        window_start=start,
        window_end=end,
        limit=f.optional_integer("limit"),
        used=f.integer("used", minimum=None),
        threshold=f.optional_number("threshold"),
        utilization=f.optional_number("utilization"),
        crossed_at=f.time("crossed_at"),
        emitted_at=f.time("emitted_at"),
        late=f.flag("late"),
        event_id=f.text("event_id"),
        app_id=f.optional_text("app_id"),
        recipient=f.optional_text("recipient"),
        rule=f.optional_text("rule"),
        payload=text,
        payload_sha256=sha,
    )

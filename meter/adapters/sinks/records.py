"""An alert read from the alerts topic, as every sink receives it: its id, value and exact bytes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from meter.adapters.outbox import ID_HEADER
from meter.adapters.sinks.errors import PermanentError
from meter.core.outputs import Json


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One record of the alerts topic: `body` is the value exactly as published (what a webhook
    signs and sends); `value` is it parsed; `timestamp_ms` is when the worker emitted it."""

    id: str
    value: Json
    body: bytes
    topic: str = ""
    partition: int = 0
    offset: int = 0
    timestamp_ms: int = 0

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def decode_alert(
    body: bytes | None,
    headers: Sequence[tuple[str, bytes]] = (),
    *,
    topic: str = "",
    partition: int = 0,
    offset: int = 0,
    timestamp_ms: int = 0,
) -> AlertRecord:
    """The alert in a record; `PermanentError` if it is not a JSON object with an id."""
    if not body:
        raise PermanentError("empty record value")
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PermanentError(f"record value is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise PermanentError("record value is not a JSON object")
    alert_id = value.get("id")
    if not isinstance(alert_id, str) or not alert_id:
        alert_id = next(
            (raw.decode(errors="replace") for n, raw in headers if n == ID_HEADER), None
        )
    if not isinstance(alert_id, str) or not alert_id:
        raise PermanentError("alert has no id")
    return AlertRecord(alert_id, value, body, topic, partition, offset, timestamp_ms)

"""What the ledger publishes, and how it holds it until Kafka has it.

Every output is written into the state record that produced it (its `outbox`) in the same flush as
the counts that caused it, published after that flush, and removed once Kafka acknowledged it.
After a crash, `PartitionLedger.bootstrap` returns what was still waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meter.core.events import ApiCall, event_to_json
from meter.core.ledger.records import Cells, WindowSlot
from meter.core.outputs import DEAD_LETTERS, WINDOWS, Outbound, stable_id, window_json
from meter.core.policy import Cap
from meter.core.windows import format_ms

NO_ENDPOINT = "(none)"
OTHER = "(other)"


@dataclass(frozen=True, slots=True)
class Pending:
    """An outbound record held in the outbox of state key `key`."""

    key: str
    record: Outbound


def _cells(cells: Cells) -> dict[str, dict[str, int]]:
    return {name: {"calls": c, "records": r} for name, (c, r) in cells.items()}


def window_record(slot: WindowSlot, caps: tuple[Cap, ...], now_ms: int) -> Outbound:
    """Revision `slot.rev` of the slot's window totals (`schemas/window.schema.json`)."""
    caps_out = []
    for cap in caps:
        used = slot.used(cap)
        caps_out.append({
            "cap": cap.key, "metric": cap.metric, "limit": cap.limit, "used": used,
            "utilization": round(used / cap.limit, 6),
        })  # fmt: skip
    rid = stable_id("window", slot.subject_type, slot.subject, slot.window, slot.start_ms, slot.rev)
    value: dict[str, Any] = {
        "id": rid,
        "subject_type": slot.subject_type,
        "subject": slot.subject,
        "org_id": slot.org,
        "window": window_json(slot.window, slot.start_ms, slot.end_ms),
        "revision": slot.rev,
        "calls": slot.calls,
        "records": slot.records,
        "endpoints": _cells(slot.endpoints),
        "recipients": _cells(slot.recipients),
        "caps": caps_out,
        "late_events": slot.late,
        "base": "expired" if slot.compact else "complete",
        "emitted_at": format_ms(now_ms),
    }
    return Outbound(WINDOWS, rid, f"{slot.subject_type}:{slot.subject}", value, now_ms)


def too_late(
    ev: ApiCall, level: str | None, topic: str, partition: int, offset: int, wm_ms: int, now_ms: int
) -> Outbound:
    """The dead letter of an event whose windows are past the history horizon: the event as a
    plain JSON event (so it can be sent again once fixed), with the reason in headers."""
    rid = stable_id("too_late", ev.app_id, ev.id, level)
    detail = (
        f"event time {format_ms(ev.time_ms)} is past the history horizon: the partition's event"
        f" time is {format_ms(wm_ms)}, and windows that old are no longer kept"
    )
    headers = (
        ("meter-reason", "too_late"),
        ("meter-detail", detail),
        ("meter-source-topic", topic),
        ("meter-source-partition", str(partition)),
        ("meter-source-offset", str(offset)),
    )
    return Outbound(
        DEAD_LETTERS, rid, f"{topic}:{partition}:{offset}", event_to_json(ev), now_ms, headers
    )

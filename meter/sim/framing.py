"""Kafka records of a scenario in each input format meter accepts: one JSON event per record,
batches (JSON arrays of one app's events), CloudEvents structured or binary mode. Pure.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from meter.core.events import MAX_BATCH
from meter.sim.scenario import FLUSH, MARKER, Call, Item
from meter.sim.timetext import TimeText

FORMATS = ("json", "batch", "cloudevents", "cloudevents-binary")
KEYS = ("app", "org", "none")
MAX_HOLD_MS = 40 * 60_000  # a retry held this long still arrives inside the 1-hour dedup horizon
CE_SOURCE = "/gateways/meter-sim"
CE_TYPE = "com.example.api.call.v1"

Headers = list[tuple[str, bytes]]
Render = Callable[[Item, Call], tuple[bytes, Headers]]


class Message(NamedTuple):
    """One Kafka record. `barrier`: send it only once everything before it is acknowledged.
    `send_ms`: when the scenario sends it (simulated time)."""

    key: bytes | None
    value: bytes
    headers: Headers
    events: int
    malformed: int
    barrier: bool = False
    send_ms: int = 0


class _Keys:
    """Record keys per app, encoded once."""

    def __init__(self, mode: str) -> None:
        if mode not in KEYS:
            raise ValueError(f"key must be one of {', '.join(KEYS)}, got {mode!r}")
        self.mode = mode
        self.cache: dict[tuple[str, str | None], bytes | None] = {}

    def __call__(self, item: Item) -> bytes | None:
        who = (item.app_id, item.org)
        key = self.cache.get(who, b"")
        if key == b"":
            if self.mode == "none":
                key = None
            elif self.mode == "org" and item.org is not None:
                key = item.org.encode()
            else:
                key = item.app_id.encode()
            self.cache[who] = key
        return key


def frame(
    items: Iterable[Item],
    fmt: str,
    *,
    key: str = "app",
    batch_size: int = 100,
    max_hold_ms: int = 300_000,
) -> Iterator[Message]:
    """The records to produce for `items`, in order. Malformed records are always sent alone.

    In `batch` format an app's events wait until `batch_size` are there, or the first waited
    `max_hold_ms` of send time, or a call that raises a marker alert (sent at once) arrives.
    """
    keys = _Keys(key)
    if fmt == "batch":
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch size must be between 1 and {MAX_BATCH}, got {batch_size}")
        if not 0 <= max_hold_ms <= MAX_HOLD_MS:
            raise ValueError(f"max hold must be between 0 and {MAX_HOLD_MS // 60_000} minutes")
        return _batches(items, keys, batch_size, max_hold_ms)
    if fmt == "json":
        return _singles(items, keys, _plain)
    if fmt == "cloudevents":
        return _singles(items, keys, _structured(TimeText()))
    if fmt == "cloudevents-binary":
        return _singles(items, keys, _binary(TimeText()))
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _malformed(item: Item, keys: _Keys) -> Message:
    bad = item.bad
    assert bad is not None
    return Message(keys(item), bad.value, list(bad.headers), 0, 1, send_ms=item.send_ms)


def _data_json(call: Call) -> str:
    """The fields after id, time and app_id, as JSON members (no braces, leading comma)."""
    out = f',"org_id":"{call.org_id}"' if call.org_id is not None else ""
    out += f',"endpoint":"{call.endpoint}","records":{call.records},"status":{call.status}'
    if call.recipient is not None:
        out += f',"recipient":"{call.recipient}"'
    if call.user_id is not None:
        out += f',"user_id":"{call.user_id}"'
    return out


def call_json(call: Call) -> str:
    """The plain-event JSON of a call (strings need no escaping: see `Call`)."""
    t = call.time
    time_json = t if type(t) is int else f'"{t}"'
    return f'{{"id":"{call.id}","time":{time_json},"app_id":"{call.app_id}"{_data_json(call)}}}'


def _plain(item: Item, call: Call) -> tuple[bytes, Headers]:
    return call_json(call).encode(), []


def _structured(text: TimeText) -> Render:
    head = f'{{"specversion":"1.0","source":"{CE_SOURCE}","type":"{CE_TYPE}"'

    def render(item: Item, call: Call) -> tuple[bytes, Headers]:
        value = (
            f'{head},"id":"{call.id}","subject":"{call.app_id}","time":"{text(item.time_ms)}",'
            f'"datacontenttype":"application/json","data":{{{_data_json(call)[1:]}}}}}'
        )
        return value.encode(), []

    return render


def _binary(text: TimeText) -> Render:
    source, kind = CE_SOURCE.encode(), CE_TYPE.encode()

    def render(item: Item, call: Call) -> tuple[bytes, Headers]:
        headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", call.id.encode()),
            ("ce_source", source),
            ("ce_type", kind),
            ("ce_subject", item.app_id.encode()),
            ("ce_time", text(item.time_ms).encode()),
            ("content-type", b"application/json"),
        ]
        return f"{{{_data_json(call)[1:]}}}".encode(), headers

    return render


def _singles(items: Iterable[Item], keys: _Keys, render: Render) -> Iterator[Message]:
    flushed = False
    for item in items:
        ev = item.event
        if ev is None:
            yield _malformed(item, keys)
            continue
        value, headers = render(item, ev)
        barrier = bool(item.flags & FLUSH) and not flushed
        flushed = flushed or barrier
        yield Message(keys(item), value, headers, 1, 0, barrier, item.send_ms)


def _batches(items: Iterable[Item], keys: _Keys, size: int, hold_ms: int) -> Iterator[Message]:
    buffers: dict[str, tuple[bytes | None, list[str]]] = {}
    deadlines: deque[tuple[int, str, list[str]]] = deque()
    last: list[Item] = []

    def emit(app: str, at: int) -> Message:
        record_key, events = buffers.pop(app)
        return Message(record_key, f"[{','.join(events)}]".encode(), [], len(events), 0, False, at)

    now = 0

    for item in items:
        ev = item.event
        if ev is None:
            yield _malformed(item, keys)
            continue
        if item.flags & FLUSH:
            last.append(item)
            continue
        now = item.send_ms
        while deadlines and deadlines[0][0] <= now:
            _, app, events = deadlines.popleft()
            held = buffers.get(app)
            if held is not None and held[1] is events:
                yield emit(app, now)
        app = item.app_id
        held = buffers.get(app)
        if held is None:
            held = buffers[app] = (keys(item), [])
            deadlines.append((now + hold_ms, app, held[1]))
        held[1].append(call_json(ev))
        if len(held[1]) >= size or item.flags & MARKER:
            yield emit(app, now)
    for app in list(buffers):
        yield emit(app, now)
    for n, item in enumerate(last):
        assert item.event is not None
        value = f"[{call_json(item.event)}]".encode()
        yield Message(keys(item), value, [], 1, 0, n == 0, item.send_ms)

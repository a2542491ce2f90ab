"""The ledger's state records survive their compact encoding: what the key says is not repeated
in the value, trailing defaults are left out, and values written before that still decode."""

from __future__ import annotations

import json

from meter.core.ledger.records import OPEN, WindowSlot, decode
from meter.core.outputs import ALERTS, Outbound

START = 1_640_995_200_000
END = START + 900_000


def through_json(key: str, slot: WindowSlot) -> WindowSlot:
    back = decode(key, json.loads(json.dumps(slot.encode())))
    assert isinstance(back, WindowSlot)
    return back


def test_a_window_with_every_field_set_comes_back_equal() -> None:
    slot = WindowSlot(
        3, 41, "app", "shop|eu", "acme", "15m", START, END, calls=7, records=90,
        endpoints={"/2/tweets": [7, 90]}, recipients={"government": [1, 2]},
        capped={"tier:std:search": [2, 4]}, fired=["tier:std:calls-15m@0.8"], rev=2, late=1,
        compact=True,
        outbox=[Outbound(ALERTS, "a-1", "k", {"x": 1}, START + 5, (("h", "v"),))],
    )  # fmt: skip
    key = f"s|app|shop|eu|15m|{START}"  # a subject may hold the separator
    assert through_json(key, slot) == slot
    assert "shop|eu" not in json.dumps(slot.encode())  # the key has it


def test_an_open_window_is_written_short_and_decodes_with_its_own_defaults() -> None:
    slot = WindowSlot(0, 5, "org", "acme", None, "1d", START, START + 86_400_000, calls=1)
    key = f"s|org|acme|1d|{START}"
    assert len(slot.encode()) == 7
    first, second = through_json(key, slot), through_json(key, slot)
    assert first == slot
    assert first.rev == OPEN
    first.endpoints["/x"] = [1, 0]
    first.fired.append("c@1.0")
    assert second.endpoints == {}  # nothing shared between two decoded windows
    assert second.fired == []


def test_a_window_written_before_the_compact_encoding_still_decodes() -> None:
    old = [
        "s", 1, 9, "app", "a1", "acme", "15m", START, END, 3, 30, {"/x": [3, 30]}, {}, {}, [],
        -1, 0, 0, [],
    ]  # fmt: skip
    slot = decode(f"s|app|a1|15m|{START}", old)
    assert slot == WindowSlot(1, 9, "app", "a1", "acme", "15m", START, END, 3, 30, {"/x": [3, 30]})

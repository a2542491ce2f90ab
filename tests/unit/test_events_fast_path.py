"""The fast path of `decode_record` (msgspec, in C) decides exactly as the reference path
(`json` and `make_call`, which give every rejection its reason): same events, same rejections,
for valid events, every kind of bad field, batches, CloudEvents and arbitrary bytes."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meter.core import events as events_module
from meter.core.events import decode_record

T0 = 1_646_092_800_000

# Values a field may hold: right, wrong type, out of range, empty, too long, not ASCII, surrogates.
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 99, 100, 200, 599, 600, 10**9, 10**9 + 1, T0, 7_258_118_400_000]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=140),
    st.sampled_from(["", "x" * 129, "x" * 257, "é", "\ud800", "2022-03-01T10:00:00Z",
                     "2022-03-01T10:00:00+01:00", "2022-03-01t10:00:00z", "2022-03-01 10:00:00Z",
                     "2022-13-01T10:00:00Z", "2200-01-01T00:00:00Z", "/2/tweets/search/*"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip
ODD_TEXTS = ['{"id": 1}', "[]", "{}", " {}", "[1, 2]", "null", "NaN",
             '{"id":"a","time":NaN,"app_id":"x"}', '\ufeff{"id":"a"}',
             '{"id":"a","id":"b","time":1,"app_id":"x"}']  # fmt: skip
FIELDS = ("id", "time", "app_id", "org_id", "endpoint", "records", "status", "recipient",
          "user_id", "specversion", "extra")  # fmt: skip


def valid_event(i: int = 0) -> dict[str, Any]:
    return {"id": f"e{i}", "time": T0 + i, "app_id": "app", "endpoint": "/2/tweets",
            "records": 5, "status": 200}  # fmt: skip


@st.composite
def event_docs(draw: st.DrawFn) -> dict[str, Any]:
    doc = valid_event(draw(st.integers(0, 1000)))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        if draw(st.booleans()):
            doc.pop(name, None)
        else:
            doc[name] = draw(ANY_VALUE)
    return doc


@st.composite
def records(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["one", "batch", "bytes", "text"]))
    if kind == "one":
        return json.dumps(draw(event_docs())).encode()
    if kind == "batch":
        docs = draw(st.lists(st.one_of(event_docs(), ANY_VALUE), max_size=6))
        return json.dumps(docs).encode()
    if kind == "text":
        return draw(st.sampled_from(ODD_TEXTS)).encode()
    return draw(st.binary(max_size=64))


def reference(value: bytes) -> Any:
    return events_module._decode(value, ())


@given(records())
@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@example(json.dumps(valid_event()).encode())
@example(json.dumps([valid_event(1), valid_event(2)]).encode())
@example(json.dumps({**valid_event(), "time": "2022-03-01T10:00:00.5+01:00"}).encode())
@example(json.dumps({**valid_event(), "records": True}).encode())
@example(json.dumps({**valid_event(), "status": None, "records": None}).encode())
@example(json.dumps({**valid_event(), "specversion": None}).encode())
@example(b'{"id":"\\ud800","time":1,"app_id":"x"}')
def test_the_fast_path_decides_as_the_reference_does(value: bytes) -> None:
    assert decode_record(value) == reference(value)


def test_valid_plain_events_take_the_fast_path() -> None:
    one = json.dumps(valid_event()).encode()
    batch = json.dumps([valid_event(1), valid_event(2)]).encode()
    assert events_module._fast(one) == reference(one)
    assert events_module._fast(batch) == reference(batch)
    assert events_module._fast(json.dumps({**valid_event(), "records": -1}).encode()) is None

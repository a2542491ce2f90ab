"""Hostile input against the decoder (issue 15): 10,000 generated records of every kind a gateway
or an attacker can put on the input topic (random bytes, valid events and batches with hostile
fields spliced in or bytes mutated, deep nesting, huge documents, NaN and huge numbers, bad UTF-8,
lone surrogates, CloudEvents with broken attributes and `ce_*` headers), plus records near the
broker's 1 MB limit. Every one must be accounted for: never an exception, events or rejections
that cover the whole record (one per element of a batch), stable reasons, bounded details, a dead
letter that fits on the topic, and events that survive the routed topic and re-decode as
themselves. The fast path (msgspec) must decide as the reference path does on all of it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meter.adapters.wire import MAX_RECORD_BYTES, dead_letter, decode_routed, encode_routed
from meter.core import events as events_module
from meter.core.events import MAX_BATCH, REASONS, ApiCall, Decoded, Headers, decode_record

T0 = 1_646_092_800_000  # 2022-03-01T00:00:00Z
MAX_DETAIL = 300
EXAMPLES = 10_000

VALID: dict[str, Any] = {
    "id": "e1", "time": T0, "app_id": "app", "org_id": "acme", "endpoint": "/2/tweets",
    "records": 5, "status": 200, "recipient": "government", "user_id": "u1",
}  # fmt: skip
FIELDS = (*VALID, "specversion", "data", "extra", "", "\\ud800", "ID", "id ")
DEEP = 5_000  # nesting levels: far beyond the interpreter's recursion limit
HOSTILE = (
    # non-JSON constants, numbers out of every range, over Python's 4,300-digit int limit
    "NaN", "-NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "-0", "0.5", "1E400",
    "1" * 4301, "-" + "9" * 5000, "9223372036854775808", "-9223372036854775809",
    "18446744073709551616", "7258118400000", "-1", str(T0), "1.0e3",
    # lone surrogates (escaped: valid JSON, invalid Unicode), NUL, control characters
    '"\\ud800"', '"\\udc00x"', '"x\\udbff"', '"\\ud83d\\ude00"', '"a\\u0000b"', '"\\u001f"',
    '"' + "x" * 300 + '"', '""', '" "', '"é"', "null", "true", "false",
    # containers, deep and shallow
    "[]", "{}", "[1,2]", '{"a":1}', "[" * 64 + "]" * 64, "[" * DEEP + "]" * DEEP,
    '{"a":' * DEEP + "1" + "}" * DEEP, "[{" * 40 + "}]" * 40,
    # times and versions
    '"2022-03-01T10:00:00Z"', '"2022-03-01T10:00:00"', '"2022-02-30T00:00:00Z"',
    '"9999-12-31T23:59:59Z"', '"1969-12-31T23:59:59Z"', '"2022-03-01T10:00:00.123456789+01:00"',
    '"2022-03-01t10:00:00z"', '"1.0"', '"0.3"',
)  # fmt: skip
BAD_UTF8 = (
    b"\xff", b"\xfe\xff", b"\x80", b"\xc0\xaf", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80",
    b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf0\x9f\x98", b"\xef\xbb\xbf",
)  # fmt: skip
HEADER_VALUES = (
    b"1.0", b"0.3", b"", None, b"\xff", b"\xed\xa0\x80", b"1.0\x00", b"x" * 200, b"x" * 5000,
    b"id-1", b"app", b"/src", b"t", b"2022-03-01T10:00:00Z", b"2022-03-01T10:00:00", b"garbage",
    str(T0).encode(), "é".encode(),
)  # fmt: skip
CE_NAMES = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject")


def text_of(fields: Sequence[tuple[str, str]]) -> str:
    """A JSON object written by hand, so any fragment (even invalid JSON) can be spliced in."""
    return "{" + ",".join(f'"{name}":{value}' for name, value in fields) + "}"


class Forge:
    """Builds hostile records from a seeded `random.Random`: hypothesis draws the kind and the
    seed (a few draws per example, so 10,000 examples stay fast) and shows the record it made
    when a check fails."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def fragment(self) -> str:
        rng = self.rng
        if rng.random() < 0.2:
            text = "".join(chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x10FFFF))))
                           for _ in range(rng.randrange(12)))  # fmt: skip
            return json.dumps(text)
        return rng.choice(HOSTILE)

    def event(self) -> str:
        """A valid event with a few fields removed, replaced by hostile JSON, or added."""
        rng = self.rng
        fields = {name: json.dumps(value) for name, value in VALID.items()}
        for _ in range(rng.randrange(5)):
            name = rng.choice(FIELDS)
            if rng.random() < 0.2:
                fields.pop(name, None)
            else:
                fields[name] = self.fragment()
        return text_of(list(fields.items()))

    def cloudevent(self) -> str:
        """A structured-mode CloudEvent with broken attributes (or `data`)."""
        rng = self.rng
        attrs = {
            "specversion": '"1.0"', "id": '"c1"', "source": '"/gw"', "type": '"t"',
            "time": '"2022-03-01T10:00:00Z"', "subject": '"app"',
            "data": text_of([("records", "3"), ("endpoint", '"/x"')]),
        }  # fmt: skip
        for _ in range(rng.randrange(4)):
            name = rng.choice(list(attrs) or ["data"])
            roll = rng.random()
            if roll < 0.3:
                attrs.pop(name, None)
            elif name == "data" and roll < 0.6:
                attrs[name] = self.event()
            else:
                attrs[name] = self.fragment()
        return text_of(list(attrs.items()))

    def batch(self) -> str:
        rng = self.rng
        parts = [rng.choice((self.event, self.cloudevent, self.fragment))()
                 for _ in range(rng.randrange(9))]  # fmt: skip
        return "[" + ",".join(parts) + "]"

    def headers(self) -> Headers:
        """`ce_*` headers of a binary-mode CloudEvent, broken: missing, empty, null, not UTF-8,
        huge, the wrong version, odd case, repeated; as pairs or as a mapping."""
        rng = self.rng
        headers: list[tuple[str, bytes | None]] = [
            ("ce_specversion", b"1.0"), ("ce_id", b"b1"), ("ce_source", b"/gw"), ("ce_type", b"t"),
        ]  # fmt: skip
        for _ in range(rng.randrange(5)):
            name = rng.choice(CE_NAMES)
            if rng.random() < 0.3:
                name = rng.choice((name.upper(), name.capitalize()))
            if rng.random() < 0.25:
                headers = [(k, v) for k, v in headers if k.lower() != name.lower()]
            else:
                headers.append((name, rng.choice(HEADER_VALUES)))
        if rng.random() < 0.3:
            headers.append((rng.choice(("", "ce_", "Ce_X", "é", "content-type")),
                            rng.choice(HEADER_VALUES)))  # fmt: skip
        return dict(headers) if rng.random() < 0.2 else headers

    def mutated(self, data: bytes) -> bytes:
        """Byte-level damage: flips, inserted garbage or bad UTF-8, cuts, repeated slices."""
        rng = self.rng
        out = bytearray(data)
        for _ in range(rng.randrange(1, 5)):
            at = rng.randrange(len(out) + 1)
            op = rng.randrange(6)
            if op == 0 and out:
                out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
            elif op == 1:
                out[at:at] = rng.choice(BAD_UTF8)
            elif op == 2:
                out[at:at] = rng.randbytes(rng.randrange(1, 8))
            elif op == 3:
                del out[at : at + rng.randrange(1, 16)]
            elif op == 4:
                del out[at:]
            else:
                out[at:at] = out[at : at + rng.randrange(1, 32)]
        return bytes(out)

    def record(self, kind: int) -> tuple[bytes | None, Headers]:
        """(value, headers) of one input record of `kind` (0-9)."""
        rng = self.rng
        if kind == 0:
            return (None if rng.random() < 0.05 else rng.randbytes(rng.randrange(300))), ()
        if kind <= 3:
            return self.event().encode(), ()
        if kind <= 5:
            return self.batch().encode(), ()
        if kind == 6:
            return self.cloudevent().encode(), ()
        if kind == 7:
            value = self.event() if rng.random() < 0.7 else self.fragment()
            return value.encode(), self.headers()
        base = rng.choice((self.event, self.cloudevent, self.batch))().encode()
        if kind == 9:  # huge: up to ~100 KB of copies
            base = b"[" + b",".join([base] * rng.randrange(1, 400)) + b"]"
        value = self.mutated(base)
        return value, (self.headers() if rng.random() < 0.2 else ())


@st.composite
def hostile_records(draw: st.DrawFn) -> tuple[bytes | None, Headers, int | None]:
    """(value, headers, latest_ms) of one input record."""
    kind = draw(st.integers(0, 9))
    seed = draw(st.integers(0, 2**64 - 1))
    latest = draw(st.sampled_from([None, None, None, T0, T0 + 5, 0]))
    value, headers = Forge(random.Random(seed)).record(kind)
    return value, headers, latest


# Near the broker's 1 MB limit, and the batch size limits.
NEAR_1MB = 1_048_000
RNG = random.Random(15)
_ONE = json.dumps(VALID, separators=(",", ":"))
_BIG_EXAMPLES: list[bytes] = [
    b"\xff" + RNG.randbytes(NEAR_1MB),
    json.dumps({**VALID, "endpoint": "/" + "e" * NEAR_1MB}).encode(),
    json.dumps({**VALID, "padding": "p" * NEAR_1MB}).encode(),
    json.dumps("s" * NEAR_1MB).encode(),
    b"[" * NEAR_1MB,
    b"[" * (NEAR_1MB // 2) + b"]" * (NEAR_1MB // 2),
    b"{" + b'"a":{' * (NEAR_1MB // 6),
    b"1" * NEAR_1MB,
    b" " * NEAR_1MB,
    ("[" + ",".join([_ONE] * 5000) + "]").encode(),
    ("[" + ",".join(['{"id":"x","time":1,"app_id":"a"}'] * (MAX_BATCH + 1)) + "]").encode(),
    ("[" + ",".join(['{"id":"x","time":1,"app_id":"a"}'] * MAX_BATCH) + "]").encode(),
    ("[" + ",".join(['{"id":"x","time":1}'] * MAX_BATCH) + "]").encode(),
    ("[" + ",".join(["1"] * MAX_BATCH) + "]").encode(),
]


def shape(value: bytes | None, headers: Headers) -> int | None:
    """The number of elements when the record is a batch the decoder must account for element
    by element (a JSON array of 1..MAX_BATCH, not in CloudEvents binary mode); None when the
    record as a whole is one event or one rejection. Worked out independently of the decoder:
    any JSON the standard library reads (integers of any length) without NaN or Infinity."""
    names = headers.keys() if isinstance(headers, Mapping) else [k for k, _ in headers]
    if value is None or any(type(k) is str and k.lower() == "ce_specversion" for k in names):
        return None
    try:
        doc = json.loads(value.decode("utf-8"), parse_constant=_refuse, parse_int=len)
    except (ValueError, RecursionError):
        return None
    return len(doc) if type(doc) is list and 0 < len(doc) <= MAX_BATCH else None


def _refuse(name: str) -> object:
    raise ValueError(name)


def check(value: bytes | None, headers: Headers, latest_ms: int | None) -> Decoded:
    decoded = decode_record(value, headers, latest_ms)
    events, rejections = decoded.events, decoded.rejections
    if latest_ms is None:
        # The fast path (msgspec) decides as the reference path (json) does, on anything.
        assert decoded == events_module._decode(value, headers)
    # Accounted for: a batch element by element, anything else as one event or one rejection.
    count = shape(value, headers)
    if count is None:
        assert (len(events), len(rejections)) in ((1, 0), (0, 1))
        assert all(r.index is None for r in rejections)
    else:
        assert len(events) + len(rejections) == count
        indexes = [r.index for r in rejections]
        assert all(i is not None and 0 <= i < count for i in indexes)
        assert indexes == sorted(set(indexes))  # type: ignore[type-var]
    # Stable reasons, short details, and a dead letter that Kafka takes.
    for r in rejections:
        assert r.reason in REASONS, r
        assert 0 < len(r.detail) <= MAX_DETAIL, r
    if rejections:
        letter = dead_letter(value, rejections, "api-calls", 3, 10**12)
        size = len(letter.key) + len(letter.value or b"")
        size += sum(len(k.encode()) + len(v) for k, v in letter.headers)
        assert size <= MAX_RECORD_BYTES
        assert json.loads(dict(letter.headers)["meter-rejections"])
    # Events are valid everywhere downstream: UTF-8 keys, the routed topic, the event contract.
    for ev in events:
        assert type(ev) is ApiCall
        for text in (ev.id, ev.app_id, ev.org_id, ev.endpoint, ev.recipient, ev.user_id):
            assert text is None or text.encode("utf-8")
        plain = json.dumps(events_module.event_to_json(ev)).encode()
        assert decode_record(plain) == Decoded([ev], [])
    if events:
        routed = decode_routed(encode_routed(events, T0))
        assert routed is not None
        assert list(routed.events) == events
    return decoded


@given(hostile_records())
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@example((b'{"id":"a","time":1,"app_id":"x","extra":' + b"[" * DEEP + b"]" * DEEP + b"}", (), None))
@example((b'[{"id":"a","time":1,"app_id":"x","x":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}]",
          (), None))  # fmt: skip
@example((b'{"id":"a","time":1,"app_id":"x","extra":"\xff"}', (), None))
@example((b'{"id":"a","time":1,"app_id":"x","extra":"\xed\xa0\x80"}', (), None))
@example((b'[{"id":"a","time":1,"app_id":"x","e":"\xc3\x28"}]', (), None))
@example((b'{"id":"a","time":1,"app_id":"x","extra":' + b"1" * 5000 + b"}", (), None))
@example((b'{"id":"a","time":1,"app_id":"x","records":' + b"1" * 5000 + b"}", (), None))
@example((b'[{"id":"a","time":' + b"9" * 4400 + b',"app_id":"x"}]', (), None))
def test_every_hostile_record_is_accounted_for(
    record: tuple[bytes | None, Headers, int | None],
) -> None:
    check(*record)


def test_records_near_the_size_limit_are_accounted_for() -> None:
    for value in _BIG_EXAMPLES:
        check(value, (), None)
        check(value, (), T0)
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"i" * NEAR_1MB), ("ce_source", b"s"),
               ("ce_type", b"t")]  # fmt: skip
    assert [r.reason for r in check(_ONE.encode(), headers, None).rejections] == ["too_long"]

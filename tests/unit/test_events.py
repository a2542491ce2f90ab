"""Tests of meter.core.events: plain, batch and CloudEvents decoding, rejections, time parsing."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import EllipsisType
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter.core.errors import EventError
from meter.core.events import (
    MAX_BATCH,
    REASONS,
    ApiCall,
    Decoded,
    Headers,
    Rejection,
    decode_record,
    event_to_json,
    parse_time,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
T0 = 1646136000000  # 2022-03-01T12:00:00Z
MAX_MS = 7258118400000  # 2200-01-01T00:00:00Z
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BASE: dict[str, Any] = {"id": "e1", "time": T0, "app_id": "app"}
TIME_HINT = (
    "%s: expected an RFC 3339 string with a zone (e.g. 2022-03-01T12:00:00Z)"
    " or integer epoch ms, got "
)
STATUS = "field 'status' must be an integer HTTP status in 100..599, got "
RECORDS = "field 'records' must be an integer >= 0, got "
EPOCH_RANGE = "field 'time': epoch milliseconds must be in 0..7258118399999, got "
RANGE = "field 'time': timestamp must be in [1970-01-01, 2200-01-01), got "
ZONE = "field 'time': timestamp must end with Z or a +HH:MM offset, got "
CE_HEADERS = [
    ("ce_specversion", b"1.0"),
    ("ce_id", b"b1"),
    ("ce_source", b"/gateway"),
    ("ce_type", b"com.example.api.call"),
]


def enc(doc: object) -> bytes:
    return json.dumps(doc).encode()


def dec(doc: object, headers: Headers | None = None) -> Decoded:
    return decode_record(enc(doc), headers or ())


def ok(*events: ApiCall) -> Decoded:
    return Decoded(list(events), [])


def rej(reason: str, detail: str, index: int | None = None) -> Decoded:
    return Decoded([], [Rejection(reason, detail, index)])


def call(**kw: Any) -> ApiCall:
    return ApiCall(**{"id": "e1", "time_ms": T0, "app_id": "app", **kw})


def ce(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "specversion": "1.0",
        "id": "c1",
        "source": "/gateway",
        "type": "com.example.api.call",
        "time": "2022-03-01T12:00:00Z",
        "subject": "app",
        "data": {"records": 5},
    }
    base.update(kw)
    return {k: v for k, v in base.items() if v is not ...}


# --- plain events that decode -----------------------------------------------------------------


def doc(**kw: Any) -> dict[str, Any]:
    """BASE with `kw` replaced or added, or removed when given `...`."""
    return {k: v for k, v in {**BASE, **kw}.items() if v is not ...}


OPTIONALS = {"org_id": "o", "endpoint": "/v1/people", "recipient": "government", "user_id": "u"}
NULLS = dict.fromkeys([*OPTIONALS, "records", "status"])

VALID = [
    ("minimal", BASE, call()),
    ("full", doc(**OPTIONALS, records=25, status=404), call(**OPTIONALS, records=25, status=404)),
    ("nulls-are-absent", doc(**NULLS), call()),
    ("unknown-fields-ignored", doc(extra={"x": [1]}, v=2), call()),
    ("limits", doc(id="i" * 128, app_id="a" * 128), call(id="i" * 128, app_id="a" * 128)),
    (
        "opt-limits", doc(endpoint="e" * 256, recipient="r" * 64),
        call(endpoint="e" * 256, recipient="r" * 64),
    ),
    ("non-ascii", doc(app_id="é" * 128, org_id="日本"), call(app_id="é" * 128, org_id="日本")),
    ("records-max", doc(records=1_000_000_000), call(records=1_000_000_000)),
    ("status-100", doc(status=100), call(status=100)),
    ("status-599", doc(status=599), call(status=599)),
    ("time-zero", doc(time=0), call(time_ms=0)),
    ("time-max", doc(time=MAX_MS - 1), call(time_ms=MAX_MS - 1)),
    ("rfc3339-z", doc(time="2022-03-01T12:00:00Z"), call()),
    ("rfc3339-offset", doc(time="2022-03-01T14:00:00+02:00"), call()),
    ("rfc3339-neg-offset", doc(time="2022-03-01T11:30:00.5-00:30"), call(time_ms=T0 + 500)),
    ("rfc3339-fraction", doc(time="2022-03-01T12:00:00.123Z"), call(time_ms=T0 + 123)),
    ("rfc3339-truncated", doc(time="2022-03-01T12:00:00.123999999Z"), call(time_ms=T0 + 123)),
    ("rfc3339-lowercase", doc(time="2022-03-01t12:00:00z"), call()),
    ("rfc3339-epoch", doc(time="1969-12-31T23:00:00-01:00"), call(time_ms=0)),
    ("rfc3339-last-ms", doc(time="2199-12-31T23:59:59.999Z"), call(time_ms=MAX_MS - 1)),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "expected"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_plain_event_decodes(doc: dict[str, Any], expected: ApiCall) -> None:
    assert dec(doc) == ok(expected)


# --- whole-record rejections ------------------------------------------------------------------

NOT_JSON = "record value is not JSON: "
NOT_OBJECT = "record value must be a JSON object or array, got "
RECORD_REJECTIONS: list[tuple[str, bytes | None, str, str]] = [
    ("none", None, "empty", "record value is null"),
    ("empty", b"", "empty", "record value is empty"),
    ("whitespace", b" \n\t ", "empty", "record value is empty"),
    ("bad-utf8", b'{"id": "\xff"}', "not_utf8", "record value is not valid UTF-8 at byte 8"),
    (
        "utf16", '{"id": 1}'.encode("utf-16"),
        "not_utf8", "record value is not valid UTF-8 at byte 0",
    ),
    ("truncated", b'{"id": ', "not_json", NOT_JSON + "Expecting value: line 1 column 8 (char 7)"),
    ("trailing-garbage", b"{} x", "not_json", NOT_JSON + "Extra data: line 1 column 4 (char 3)"),
    ("nan", b'{"records": NaN}', "not_json", NOT_JSON + "ValueError: NaN is not valid JSON"),
    ("infinity", b"-Infinity", "not_json", NOT_JSON + "ValueError: -Infinity is not valid JSON"),
    ("string", b'"hello"', "wrong_type", NOT_OBJECT + "'hello'"),
    ("number", b"42", "wrong_type", NOT_OBJECT + "42"),
    ("null", b"null", "wrong_type", NOT_OBJECT + "null"),
    ("bool", b"true", "wrong_type", NOT_OBJECT + "true"),
    ("empty-batch", b"[]", "empty_batch", "batch array is empty"),
    (
        "batch-too-large", enc([BASE] * 10_001),
        "batch_too_large", "batch has 10001 elements, at most 10000",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [c[1:] for c in RECORD_REJECTIONS],
    ids=[c[0] for c in RECORD_REJECTIONS],
)
def test_record_rejection(value: bytes | None, reason: str, detail: str) -> None:
    assert decode_record(value) == rej(reason, detail)


def test_deep_nesting_is_not_json_not_a_crash() -> None:
    result = decode_record(b"[" * 100_000)
    assert [r.reason for r in result.rejections] == ["not_json"]
    assert result.events == []


def test_batch_of_exactly_max_is_accepted() -> None:
    result = decode_record(enc([BASE] * MAX_BATCH))
    assert result.rejections == []
    assert len(result.events) == MAX_BATCH


# --- field rejections (one event) ---------------------------------------------------------------

HINT = TIME_HINT % "field 'time'"


def too_long(name: str, limit: int, char: str = "x") -> tuple[str, dict[str, Any], str, str]:
    detail = f"field '{name}' must be at most {limit} characters, got {limit + 1}"
    return (f"{name}-too-long", doc(**{name: char * (limit + 1)}), "too_long", detail)


FIELD_REJECTIONS: list[tuple[str, dict[str, Any], str, str]] = [
    ("id-missing", doc(id=...), "missing_field", "field 'id' is required"),
    ("id-null", doc(id=None), "missing_field", "field 'id' is required"),
    ("id-int", doc(id=5), "bad_field", "field 'id' must be a string, got 5"),
    ("id-empty", doc(id=""), "bad_field", "field 'id' must be a non-empty string, got ''"),
    ("app-missing", doc(app_id=...), "missing_field", "field 'app_id' is required"),
    ("app-list", doc(app_id=["a"]), "bad_field", "field 'app_id' must be a string, got an array"),
    (
        "app-surrogate", doc(app_id="a\ud800"),
        "bad_field", "field 'app_id' must be valid Unicode (no lone surrogates)",
    ),
    too_long("id", 128),
    too_long("app_id", 128, "é"),
    too_long("org_id", 128),
    too_long("endpoint", 256),
    too_long("recipient", 64),
    too_long("user_id", 128),
    ("org-int", doc(org_id=7), "bad_field", "field 'org_id' must be a string, got 7"),
    ("org-empty", doc(org_id=""), "bad_field", "field 'org_id' must be a non-empty string, got ''"),
    (
        "recipient-object", doc(recipient={}),
        "bad_field", "field 'recipient' must be a string, got an object",
    ),
    ("time-missing", doc(time=...), "missing_field", "field 'time' is required"),
    ("time-null", doc(time=None), "missing_field", "field 'time' is required"),
    ("time-float", doc(time=1646136000000.0), "bad_time", HINT + "1646136000000.0"),
    ("time-bool", doc(time=True), "bad_time", HINT + "true"),
    ("time-negative", doc(time=-1), "bad_time", EPOCH_RANGE + "-1"),
    ("time-2200", doc(time=MAX_MS), "bad_time", EPOCH_RANGE + "7258118400000"),
    ("time-no-zone", doc(time="2022-03-01T12:00:00"), "bad_time", HINT + "'2022-03-01T12:00:00'"),
    ("time-space", doc(time="2022-03-01 12:00:00Z"), "bad_time", HINT + "'2022-03-01 12:00:00Z'"),
    (
        "time-empty-fraction", doc(time="2022-03-01T12:00:00.Z"),
        "bad_time", HINT + "'2022-03-01T12:00:00.Z'",
    ),
    (
        "time-week-date", doc(time="2022-W09-2T12:00:00Z"),
        "bad_time", HINT + "'2022-W09-2T12:00:00Z'",
    ),
    (
        "time-no-zone-fraction", doc(time="2022-03-01T12:00:00.123"),
        "bad_time", ZONE + "'2022-03-01T12:00:00.123'",
    ),
    (
        "time-compact-offset", doc(time="2022-03-01T12:00:00+0200"),
        "bad_time", ZONE + "'2022-03-01T12:00:00+0200'",
    ),
    (
        "time-year-2200", doc(time="2200-01-01T00:00:00Z"),
        "bad_time", RANGE + "'2200-01-01T00:00:00Z'",
    ),
    (
        "time-before-epoch", doc(time="1970-01-01T00:00:00+01:00"),
        "bad_time", RANGE + "'1970-01-01T00:00:00+01:00'",
    ),
    (
        "time-feb-30",
        doc(time="2022-02-30T00:00:00Z"),
        "bad_time",
        "field 'time': invalid timestamp '2022-02-30T00:00:00Z': day is out of range for month",
    ),
    (
        "records-negative", doc(records=-3),
        "bad_field", "field 'records' must be an integer >= 0, got -3",
    ),
    ("records-float", doc(records=3.0), "bad_field", RECORDS + "3.0"),
    ("records-bool", doc(records=True), "bad_field", RECORDS + "true"),
    ("records-string", doc(records="3"), "bad_field", RECORDS + "'3'"),
    (
        "records-huge", doc(records=10**9 + 1),
        "bad_field", "field 'records' must be an integer <= 1000000000, got 1000000001",
    ),
    ("status-99", doc(status=99), "bad_field", STATUS + "99"),
    ("status-600", doc(status=600), "bad_field", STATUS + "600"),
    ("status-string", doc(status="200"), "bad_field", STATUS + "'200'"),
    ("status-bool", doc(status=False), "bad_field", STATUS + "false"),
    ("first-error-wins", doc(id=1, records=-1), "bad_field", "field 'id' must be a string, got 1"),
    ("long-value-shortened", doc(status="x" * 1000), "bad_field", STATUS + "'" + "x" * 40 + "...'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("doc", "reason", "detail"),
    [c[1:] for c in FIELD_REJECTIONS],
    ids=[c[0] for c in FIELD_REJECTIONS],
)
def test_field_rejection(doc: dict[str, Any], reason: str, detail: str) -> None:
    assert dec(doc) == rej(reason, detail)
    # The same element inside a batch is rejected alone, with its index, between two good ones.
    assert dec([BASE, doc, BASE]) == Decoded([call(), call()], [Rejection(reason, detail, 1)])


# --- batches -------------------------------------------------------------------------------------


def test_batch_keeps_order_and_rejects_elements_individually() -> None:
    batch = [
        doc(id="a"),
        5,
        doc(id="c", records=-1),
        ce(id="d"),
        {},
        [BASE],
        doc(id="g", time="2022-03-01T12:00:01Z"),
    ]
    assert dec(batch) == Decoded(
        [call(id="a"), call(id="d", records=5), call(id="g", time_ms=T0 + 1000)],
        [
            Rejection("wrong_type", "batch element must be a JSON object, got 5", 1),
            Rejection("bad_field", RECORDS + "-1", 2),
            Rejection("missing_field", "field 'id' is required", 4),
            Rejection("wrong_type", "batch element must be a JSON object, got an array", 5),
        ],
    )


def test_batch_element_cloudevent_rejection_has_index() -> None:
    assert dec([BASE, ce(specversion="0.3")]) == Decoded(
        [call()],
        [Rejection("bad_cloudevent", "attribute 'specversion' must be \"1.0\", got '0.3'", 1)],
    )


# --- CloudEvents structured mode ---------------------------------------------------------------


def bad_ce(detail: str) -> Decoded:
    return rej("bad_cloudevent", detail)


STRUCTURED: list[tuple[str, dict[str, Any], Decoded]] = [
    ("attributes", ce(), ok(call(id="c1", records=5))),
    (
        "attributes-win", ce(data={"id": "x", "time": 1, "app_id": "o", "records": 2}),
        ok(call(id="c1", records=2)),
    ),
    (
        "data-fills-in", ce(time=..., subject=..., data={"time": 1, "app_id": "d"}),
        ok(call(id="c1", time_ms=1, app_id="d")),
    ),
    ("null-attributes-fall-back", ce(time=None, subject=None, data=BASE), ok(call(id="c1"))),
    (
        "extensions-ignored", ce(traceparent="00-ab", datacontenttype="application/json"),
        ok(call(id="c1", records=5)),
    ),
    (
        "wrong-version", ce(specversion="0.3"),
        bad_ce("attribute 'specversion' must be \"1.0\", got '0.3'"),
    ),
    (
        "null-version", ce(specversion=None),
        bad_ce("attribute 'specversion' must be \"1.0\", got null"),
    ),
    ("no-id", ce(id=...), bad_ce("attribute 'id' must be a non-empty string, got null")),
    (
        "empty-source", ce(source=""),
        bad_ce("attribute 'source' must be a non-empty string, got ''"),
    ),
    ("int-type", ce(type=1), bad_ce("attribute 'type' must be a non-empty string, got 1")),
    ("no-data", ce(data=...), bad_ce("attribute 'data' must be a JSON object, got null")),
    (
        "base64-data", ce(data=..., data_base64="e30="),
        bad_ce("attribute 'data' must be a JSON object, got null"),
    ),
    ("string-data", ce(data="{}"), bad_ce("attribute 'data' must be a JSON object, got '{}'")),
    (
        "long-id", ce(id="i" * 129),
        rej("too_long", "attribute 'id' must be at most 128 characters, got 129"),
    ),
    ("bad-subject", ce(subject=5), rej("bad_field", "attribute 'subject' must be a string, got 5")),
    (
        "no-app", ce(subject=...),
        rej("missing_field", "field 'app_id' (or attribute 'subject') is required"),
    ),
    ("no-time", ce(time=...), rej("missing_field", "field 'time' is required")),
    ("bad-time", ce(time="noon"), rej("bad_time", TIME_HINT % "attribute 'time'" + "'noon'")),
    ("bad-data-field", ce(data={"status": 1000}), rej("bad_field", STATUS + "1000")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("doc", "expected"), [c[1:] for c in STRUCTURED], ids=[c[0] for c in STRUCTURED]
)
def test_structured_cloudevent(doc: dict[str, Any], expected: Decoded) -> None:
    assert dec(doc) == expected


# --- CloudEvents binary mode -------------------------------------------------------------------


def hdrs(**kw: bytes | EllipsisType | None) -> list[tuple[str, Any]]:
    """CE_HEADERS with `kw` (ce_ prefix implied) replaced or added, or removed when given `...`."""
    out: dict[str, bytes | EllipsisType | None] = dict(CE_HEADERS)
    out.update({f"ce_{k}": v for k, v in kw.items()})
    return [(k, v) for k, v in out.items() if not isinstance(v, EllipsisType)]


REQUIRED = "is required and must be non-empty"
BINARY: list[tuple[str, Headers, object, Decoded]] = [
    ("headers-give-id", hdrs(), BASE, ok(call(id="b1"))),
    (
        "headers-win", hdrs(time=b"1970-01-01T00:00:01Z", subject=b"s"),
        doc(records=3), ok(call(id="b1", time_ms=1000, app_id="s", records=3)),
    ),
    (
        "names-any-case", [(k.upper(), v) for k, v in hdrs(Subject=b"s")],
        BASE, ok(call(id="b1", app_id="s")),
    ),
    ("other-headers-ignored", [("traceparent", b"00-x"), *hdrs()], BASE, ok(call(id="b1"))),
    ("mapping", dict(hdrs(subject=b"s")), BASE, ok(call(id="b1", app_id="s"))),
    ("last-duplicate-wins", [*hdrs(), ("ce_id", b"b2")], BASE, ok(call(id="b2"))),
    ("specversion-in-value-ignored", hdrs(), doc(specversion="0.1"), ok(call(id="b1"))),
    (
        "wrong-version", hdrs(specversion=b"0.3"),
        BASE, bad_ce("header 'ce_specversion' must be \"1.0\", got '0.3'"),
    ),
    ("missing-type", hdrs(type=...), BASE, bad_ce(f"header 'ce_type' {REQUIRED}")),
    ("empty-source", hdrs(source=b""), BASE, bad_ce(f"header 'ce_source' {REQUIRED}")),
    ("null-id", hdrs(id=None), BASE, bad_ce(f"header 'ce_id' {REQUIRED}")),
    ("id-not-utf8", hdrs(id=b"\xff"), BASE, bad_ce("header 'ce_id' is not valid UTF-8")),
    (
        "array-value", hdrs(),
        [BASE], bad_ce("a binary-mode CloudEvent carries one event, got a JSON array"),
    ),
    ("scalar-value", hdrs(), 7, rej("wrong_type", "record value must be a JSON object, got 7")),
    (
        "long-id", hdrs(id=b"i" * 129),
        BASE, rej("too_long", "header 'ce_id' must be at most 128 characters, got 129"),
    ),
    (
        "bad-time", hdrs(time=b"2022-03-01"),
        BASE, rej("bad_time", TIME_HINT % "header 'ce_time'" + "'2022-03-01'"),
    ),
    (
        "empty-subject", hdrs(subject=b""),
        BASE, rej("bad_field", "header 'ce_subject' must be a non-empty string, got ''"),
    ),
    (
        "no-app", hdrs(),
        {"time": T0}, rej("missing_field", "field 'app_id' (or header 'ce_subject') is required"),
    ),
    ("no-specversion-means-plain", hdrs(specversion=...), BASE, ok(call())),
]  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "doc", "expected"), [c[1:] for c in BINARY], ids=[c[0] for c in BINARY]
)
def test_binary_cloudevent(headers: Headers, doc: object, expected: Decoded) -> None:
    assert dec(doc, headers) == expected


def test_binary_mode_null_value_is_empty() -> None:
    assert decode_record(None, hdrs()) == rej("empty", "record value is null")


# --- parse_time, event_to_json, the fast constructor ------------------------------------------


def test_parse_time_raises_event_error() -> None:
    with pytest.raises(EventError) as info:
        parse_time("2022-03-01 12:00:00Z")
    assert info.value.reason == "bad_time"
    assert parse_time("2022-03-01T12:00:00Z") == T0
    assert parse_time(T0) == T0


def test_event_to_json_omits_none_and_keeps_defaults() -> None:
    assert event_to_json(call()) == {
        "id": "e1",
        "time": T0,
        "app_id": "app",
        "records": 0,
        "status": 200,
    }
    full = call(org_id="o", endpoint="/e", records=1, status=201, recipient="r", user_id="u")
    assert event_to_json(full) == {
        "id": "e1",
        "time": T0,
        "app_id": "app",
        "org_id": "o",
        "endpoint": "/e",
        "records": 1,
        "status": 201,
        "recipient": "r",
        "user_id": "u",
    }


def test_decoded_events_are_real_frozen_api_calls() -> None:
    doc = {**BASE, "org_id": "o", "endpoint": "/e", "records": 2, "status": 201}
    built = dec({**doc, "recipient": "r", "user_id": "u"}).events[0]
    expected = ApiCall("e1", T0, "app", "o", "/e", 2, 201, "r", "u")
    assert (built, hash(built), repr(built)) == (expected, hash(expected), repr(expected))
    assert msgspec.structs.astuple(built) == msgspec.structs.astuple(expected)
    with pytest.raises(AttributeError):
        built.id = "x"  # type: ignore[misc]


# --- schemas -----------------------------------------------------------------------------------


def load_schema(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    return doc


def test_event_schema_matches_api_call() -> None:
    schema = load_schema("api-call.schema.json")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    props = schema["properties"]
    fields = list(ApiCall.__struct_fields__)
    assert list(props) == ["time" if f == "time_ms" else f for f in fields]
    assert schema["required"] == ["id", "time", "app_id"]
    for name, prop in props.items():
        assert len(prop["description"]) > 20, name
    limits = {
        "id": 128,
        "app_id": 128,
        "org_id": 128,
        "endpoint": 256,
        "recipient": 64,
        "user_id": 128,
    }
    assert {n: props[n]["maxLength"] for n in limits} == limits
    for example in schema["examples"]:
        result = decode_record(enc(example))
        assert result.rejections == []
        assert len(result.events) == 1


def test_batch_schema_refers_to_event_schema() -> None:
    batch = load_schema("api-call-batch.schema.json")
    event = load_schema("api-call.schema.json")
    assert batch["$schema"] == event["$schema"]
    assert (batch["type"], batch["minItems"], batch["maxItems"]) == ("array", 1, MAX_BATCH)
    assert event["$id"].endswith("/" + batch["items"]["$ref"])
    assert batch["description"]


SCHEMA_TIME = re.compile(
    load_schema("api-call.schema.json")["properties"]["time"]["oneOf"][0]["pattern"]
)


# --- properties ------------------------------------------------------------------------------

CE_NAMES = [
    "ce_specversion",
    "CE_ID",
    "ce_source",
    "ce_Type",
    "ce_time",
    "ce_subject",
    "traceparent",
]
header_values = st.one_of(
    st.sampled_from([b"1.0", b"", b"\xff", b"2022-03-01T12:00:00Z", b"x", None]),
    st.binary(max_size=20),
)
header_names = st.one_of(st.sampled_from(CE_NAMES), st.text(max_size=10))
headers_strategy = st.one_of(
    st.lists(st.tuples(header_names, header_values), max_size=6),
    st.dictionaries(header_names, header_values, max_size=6),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = [
    "id",
    "time",
    "app_id",
    "org_id",
    "endpoint",
    "records",
    "status",
    "recipient",
    "user_id",
    "specversion",
    "source",
    "type",
    "subject",
    "data",
]
field_values = st.one_of(
    json_values,
    st.sampled_from(
        [
            T0,
            -1,
            MAX_MS,
            "2022-03-01T12:00:00Z",
            "1.0",
            "",
            "x" * 300,
            200,
            {"app_id": "a", "time": T0},
        ]
    ),
)
event_like = st.dictionaries(st.sampled_from(KEYS), field_values, max_size=10)


def check_invariants(result: Decoded) -> None:
    assert all(r.reason in REASONS for r in result.rejections)
    assert all(len(r.detail) < 300 for r in result.rejections)
    assert all(type(e) is ApiCall for e in result.events)


@settings(max_examples=300)
@given(value=st.one_of(st.none(), st.binary(max_size=200)), headers=headers_strategy)
def test_decode_never_raises_on_arbitrary_bytes(value: bytes | None, headers: Headers) -> None:
    check_invariants(decode_record(value, headers))


@settings(max_examples=300)
@given(
    doc=st.one_of(
        json_values, event_like, st.lists(st.one_of(event_like, json_values), max_size=8)
    ),
    headers=headers_strategy,
)
def test_decode_never_raises_on_json(doc: object, headers: Headers) -> None:
    result = decode_record(enc(doc), headers)
    names = list(headers) if isinstance(headers, Mapping) else [k for k, _ in headers]
    check_invariants(result)
    if isinstance(doc, list) and doc and not any(k.lower() == "ce_specversion" for k in names):
        # Every element is accounted for exactly once, rejections in index order.
        assert len(result.events) + len(result.rejections) == len(doc)
        indexes = [r.index for r in result.rejections if r.index is not None]
        assert indexes == sorted(set(indexes))
        assert len(indexes) == len(result.rejections)
    else:
        assert len(result.events) + len(result.rejections) == 1
        assert all(r.index is None for r in result.rejections)


def opt_text(limit: int) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), st.text(min_size=1, max_size=limit))


api_calls = st.builds(
    ApiCall,
    id=st.text(min_size=1, max_size=128),
    time_ms=st.integers(0, MAX_MS - 1),
    app_id=st.text(min_size=1, max_size=128),
    org_id=opt_text(128),
    endpoint=opt_text(256),
    records=st.integers(0, 1_000_000_000),
    status=st.integers(100, 599),
    recipient=opt_text(64),
    user_id=opt_text(128),
)


@given(events=st.lists(api_calls, min_size=1, max_size=5))
def test_encode_decode_round_trips(events: list[ApiCall]) -> None:
    assert decode_record(enc(event_to_json(events[0]))) == ok(events[0])
    assert decode_record(enc([event_to_json(e) for e in events])) == ok(*events)


@given(event=api_calls)
def test_round_trips_as_cloudevents(event: ApiCall) -> None:
    data = event_to_json(event)
    iso = at(event.time_ms).isoformat(timespec="milliseconds")
    structured = ce(
        id=event.id, time=iso, subject=event.app_id, data={**data, "id": "x", "time": 0}
    )
    assert dec(structured) == ok(event)
    headers = hdrs(id=event.id.encode(), time=iso.encode(), subject=event.app_id.encode())
    assert dec({**data, "app_id": "other"}, headers) == ok(event)


def at(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


@given(ms=st.integers(0, MAX_MS - 1), offset_min=st.integers(-(23 * 60 + 59), 23 * 60 + 59))
def test_parse_time_of_formatted_time(ms: int, offset_min: int) -> None:
    assert parse_time(at(ms).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z") == ms
    local = at(ms).astimezone(timezone(timedelta(minutes=offset_min)))
    assert parse_time(local.isoformat(timespec="milliseconds")) == ms


def time_or_reason(text: str) -> int | str:
    try:
        return parse_time(text)
    except EventError as exc:
        return exc.reason


time_like = st.one_of(
    st.text(alphabet="0123456789-:.TtZz+ ", min_size=18, max_size=32),
    st.from_regex(
        r"\A\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{0,9})?([Zz]|[+-]\d{2}:?\d{2})?\Z"
    ),
)


@settings(max_examples=400)
@given(text=time_like)
def test_accepted_times_match_the_schema_pattern(text: str) -> None:
    result = time_or_reason(text)
    if type(result) is int:
        assert SCHEMA_TIME.fullmatch(text), text
        assert 0 <= result < MAX_MS
    else:
        assert result == "bad_time"


def test_an_event_dated_beyond_the_allowed_skew_is_rejected_as_future_time() -> None:
    now = 1_646_136_000_000
    ok = {"id": "ok", "time": now + 60_000, "app_id": "a"}
    ahead = {"id": "ahead", "time": "2099-01-01T00:00:00Z", "app_id": "a"}
    single = decode_record(json.dumps(ahead).encode(), (), latest_ms=now + 300_000)
    assert single.events == []
    assert [(r.reason, r.index) for r in single.rejections] == [("future_time", None)]
    assert "2099-01-01T00:00:00Z" in single.rejections[0].detail
    batch = [ok, {"id": 7}, ahead, ok | {"id": "ok2"}]
    decoded = decode_record(json.dumps(batch).encode(), (), latest_ms=now + 300_000)
    assert [e.id for e in decoded.events] == ["ok", "ok2"]
    assert [(r.reason, r.index) for r in decoded.rejections] == [
        ("bad_field", 1),
        ("future_time", 2),
    ]
    assert decode_record(json.dumps(ahead).encode()).events != []  # no bound: accepted

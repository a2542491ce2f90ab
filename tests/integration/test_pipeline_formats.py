"""End to end: input formats. Batches and CloudEvents (structured and binary mode) count exactly
like plain events; malformed records and batch elements go to the dead-letter topic with their
original bytes and the reasons, while the worker keeps counting the good ones."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable

import pytest
from kafka import KafkaProducer

from tests.harness.data import DAY_MS, MIN_MS, Event, dumps, event, header, iso, ms
from tests.harness.deployment import Deployment
from tests.harness.oracle import expected_totals, totals_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

POLICY = """
version: 1
tiers:
  std:
    caps:
      - {id: calls-15m, metric: calls, window: 15m, limit: 1000}
orgs:
  acme: {}
apps:
  plain: {org: acme, tier: std}
  batched: {org: acme, tier: std}
  structured: {org: acme, tier: std}
  binary: {org: acme, tier: std}
  mixed: {org: acme, tier: std}
"""
SIZES = {"15m": 15 * MIN_MS}
APPS = ("plain", "batched", "structured", "binary", "mixed")
ORG_OF = dict.fromkeys(APPS, "acme")


def rfc3339_plus2(ms_: int) -> str:
    """The same instant written with a +02:00 offset, as a gateway in Europe might."""
    return iso(ms_ + 2 * 3_600_000).replace("Z", "+02:00")


def structured(ev: Event, *, subject: bool = True) -> dict[str, object]:
    data = {k: v for k, v in ev.items() if k not in ("id", "time", "app_id")}
    ce: dict[str, object] = {
        "specversion": "1.0",
        "id": ev["id"],
        "source": "/gateway/eu-1",
        "type": "com.example.api.call",
        "time": rfc3339_plus2(ev["time"]),
        "datacontenttype": "application/json",
        "data": data,
    }
    if subject:
        ce["subject"] = ev["app_id"]
    else:
        data["app_id"] = ev["app_id"]  # no subject attribute: data.app_id names the app
    return ce


def binary(ev: Event) -> tuple[bytes, list[tuple[str, bytes]]]:
    data = {k: v for k, v in ev.items() if k not in ("id", "time", "app_id")}
    data["app_id"] = "ignored-when-ce_subject-is-set"
    data["time"] = 0  # the ce_time header wins
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", ev["id"].encode()),
        ("ce_source", b"/gateway/eu-1"),
        ("ce_type", b"com.example.api.call"),
        ("ce_time", rfc3339_plus2(ev["time"]).encode()),
        ("ce_subject", ev["app_id"].encode()),
        ("content-type", b"application/json"),
    ]
    return dumps(data), headers


def test_batches_and_cloudevents_count_like_plain_events(
    deployments: Callable[..., Deployment],
) -> None:
    d = deployments(POLICY, partitions=2)
    d.start_worker()
    rng = random.Random(7)
    t = ms("2022-03-01T10:00")
    # One pattern of 40 calls over three windows, sent once per app in a different format.
    pattern = [
        (
            t + rng.randrange(45 * MIN_MS),
            rng.randrange(50),
            rng.choice(["/search", "/users", None]),
            rng.choice([200, 200, 429]),
        )
        for _ in range(40)
    ]

    def calls(app: str) -> list[Event]:
        return [
            event(f"{app}-{i}", time_, app, records=r, endpoint=ep, status=st)
            for i, (time_, r, ep, st) in enumerate(pattern)
        ]

    sent = {app: calls(app) for app in APPS}
    d.send_events(sent["plain"], partition=0)
    d.send([dumps(sent["batched"][i : i + 7]) for i in range(0, 40, 7)], partition=1)
    d.send([dumps(structured(ev, subject=i % 2 == 0)) for i, ev in enumerate(sent["structured"])])
    d.send_each([binary(ev) for ev in sent["binary"]], partition=1)
    # A batch may mix plain events and structured CloudEvents.
    mixed = [structured(ev) if i % 3 else ev for i, ev in enumerate(sent["mixed"])]
    d.send([dumps(mixed[:20]), dumps(mixed[20:])], partition=0)
    d.wait_consumed()
    d.push(t + DAY_MS, ["plain"])

    everything = [ev for evs in sent.values() for ev in evs]
    want = {k: v.as_json() for k, v in expected_totals(everything, SIZES, ORG_OF).items()}
    # The five formats arrive through different input partitions, interleaved at random: an
    # event may come after its window closed (grace is 1 s) and amend it. Final totals count.
    windows = d.settled_windows(want.keys(), timeout=90)
    final = totals_of(windows)
    assert final == want
    per_app = {
        app: sorted(
            (k[3], v["calls"], v["records"], json.dumps(v["endpoints"], sort_keys=True))
            for k, v in final.items()
            if k[1] == app
        )
        for app in APPS
    }
    assert per_app["plain"]  # and every other format gives exactly the same windows
    assert all(per_app[app] == per_app["plain"] for app in APPS), per_app
    assert d.dlq(timeout=5) == []
    d.stop_all()


def test_malformed_input_is_dead_lettered_and_the_worker_keeps_counting(
    deployments: Callable[..., Deployment],
) -> None:
    d = deployments(POLICY, partitions=2)
    worker = d.start_worker()
    t = ms("2022-03-01T10:00")
    good = event("ok-1", t, "plain", records=5)
    good2 = event("ok-2", t + 1000, "plain", records=7)
    bad: list[tuple[bytes, str, str]] = [  # (value, reason, text the detail must contain)
        (b"{not json", "not_json", "not JSON"),
        (b"\xff\xfe\x00", "not_utf8", "UTF-8"),
        (b"", "empty", "empty"),
        (b"   ", "empty", "empty"),
        (b"42", "wrong_type", "JSON object or array"),
        (b"[]", "empty_batch", "empty"),
        (dumps({"time": t, "app_id": "plain"}), "missing_field", "'id'"),
        (dumps({"id": "x1", "app_id": "plain"}), "missing_field", "'time'"),
        (dumps({"id": "x2", "time": t}), "missing_field", "'app_id'"),
        (dumps({"id": 5, "time": t, "app_id": "plain"}), "bad_field", "'id'"),
        (dumps({"id": "x3", "time": "yesterday", "app_id": "plain"}), "bad_time", "time"),
        (dumps({"id": "x4", "time": 1.5, "app_id": "plain"}), "bad_time", "time"),
        (dumps({"id": "x5", "time": t, "app_id": "plain", "records": -1}), "bad_field", "records"),
        (dumps({"id": "x6", "time": t, "app_id": "plain", "records": "9"}), "bad_field", "records"),
        (dumps({"id": "x7", "time": t, "app_id": "plain", "status": 99}), "bad_field", "status"),
        (
            dumps({"id": "x8", "time": "2022-03-01T10:00:00", "app_id": "plain"}),
            "bad_time",
            "time",
        ),
        (
            dumps({"specversion": "0.3", "id": "c", "source": "s", "type": "t", "data": {}}),
            "bad_cloudevent",
            "specversion",
        ),
    ]
    # A batch with one bad element among good ones: the good ones count, the record is
    # dead-lettered whole (original bytes) with the bad element's index.
    batch = dumps([good, {"id": "b1", "time": t, "app_id": 7}, good2])
    values = [dumps(event("first", t - 1, "plain"))] + [v for v, _, _ in bad] + [batch]
    offsets = d.send_each([(v, []) for v in values], partition=0)

    dead = d.dlq(expect=len(bad) + 1, timeout=60, settle=2.0)
    assert worker.alive()
    assert len(dead) == len(bad) + 1
    by_offset = {int(header(r, "meter-source-offset") or b"-1"): r for r in dead}
    assert set(by_offset) == {o for _, o in offsets[1:]}
    for (value, reason, detail), (partition, offset) in zip(bad, offsets[1:-1], strict=True):
        rec = by_offset[offset]
        assert rec.value == value
        assert header(rec, "meter-reason") == reason.encode(), value
        assert detail in (header(rec, "meter-detail") or b"").decode(), value
        assert header(rec, "meter-source-topic") == d.input_topic.encode()
        assert header(rec, "meter-source-partition") == str(partition).encode()
        listed = json.loads(header(rec, "meter-rejections") or b"null")
        assert listed == [
            {
                "index": None,
                "reason": reason,
                "detail": (header(rec, "meter-detail") or b"").decode(),
            }
        ]
    rec = by_offset[offsets[-1][1]]
    assert rec.value == batch
    assert header(rec, "meter-reason") == b"bad_field"
    assert [
        (r["index"], r["reason"]) for r in json.loads(header(rec, "meter-rejections") or b"[]")
    ] == [(1, "bad_field")]

    # Still alive and counting: later good events, then close the window.
    later = [event(f"later-{i}", t + 2000 + i, "plain", records=1) for i in range(5)]
    d.send_events(later, partition=1)
    d.wait_consumed()
    d.push(t + DAY_MS, ["plain"])
    counted = [event("first", t - 1, "plain"), good, good2, *later]
    want = {k: v.as_json() for k, v in expected_totals(counted, SIZES, ORG_OF).items()}
    windows = d.settled_windows(want.keys(), timeout=60)
    assert totals_of(windows) == want
    assert want[("app", "plain", "15m", t)]["calls"] == 7  # t - 1 is in the previous window
    d.stop_all()


def test_records_near_the_brokers_size_limit_are_dead_lettered_or_counted(
    deployments: Callable[..., Deployment],
) -> None:
    """A bad record just under the broker's maximum cannot be copied whole to the dead-letter
    topic (the headers push it over the limit): its copy keeps the first 64 KiB and says so.
    Valid events with long fields, a batch near the limit and thousands of single-event records
    of one organisation in one poll, are routed in records that fit, and all of them count."""
    d = deployments(POLICY, partitions=2)
    worker = d.start_worker()
    t = ms("2022-03-01T10:00")
    huge = b"\xff" + bytes(random.Random(7).getrandbits(8) for _ in range(1_048_300))
    long_fields = {"endpoint": "/" + "e" * 255}
    batch = [
        {**event(f"{'b' * 100}-{i:04d}", t + i, "batched", records=1), **long_fields}
        for i in range(1200)
    ]
    singles = [
        {**event(f"{'s' * 100}-{i:04d}", t + i, "plain", records=2), **long_fields}
        for i in range(3000)
    ]
    producer = KafkaProducer(
        bootstrap_servers=d.bootstrap, acks="all", linger_ms=20, max_request_size=1_100_000
    )
    try:
        sent = producer.send(d.input_topic, value=huge, partition=0).get(timeout=30)
        assert len(dumps(batch)) > 500_000
        producer.send(d.input_topic, value=dumps(batch), partition=0)
        for ev in singles:
            producer.send(d.input_topic, value=dumps(ev), partition=1)
        producer.flush(timeout=60)
    finally:
        producer.close()

    dead = d.dlq(expect=1, timeout=60, settle=2.0)
    assert worker.alive()
    assert len(dead) == 1
    rec = dead[0]
    assert header(rec, "meter-reason") == b"not_utf8"
    assert header(rec, "meter-source-offset") == str(sent.offset).encode()
    assert header(rec, "meter-truncated") == b"true"
    assert header(rec, "meter-original-bytes") == str(len(huge)).encode()
    assert header(rec, "meter-original-sha256") == hashlib.sha256(huge).hexdigest().encode()
    assert rec.value == huge[: 64 * 1024]

    d.wait_consumed()
    d.push(t + DAY_MS, ["plain"])
    want = {k: v.as_json() for k, v in expected_totals(batch + singles, SIZES, ORG_OF).items()}
    windows = d.settled_windows(want.keys(), timeout=60)
    assert totals_of(windows) == want
    assert worker.alive()
    d.stop_all()

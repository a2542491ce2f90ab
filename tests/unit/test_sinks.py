"""Alert sinks without a network: signing, Alertmanager mapping, re-send and resolve on a fake
clock, retries and backoff, settings."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
from collections.abc import Iterable
from typing import Any, cast

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

import meter.adapters.sinks as sinks
from meter.adapters.sinks import (
    ActiveAlerts,
    AlertRecord,
    Backoff,
    DeliveryLoop,
    PermanentError,
    RetryableError,
    SinkMetrics,
    SinkSettings,
    StartPosition,
    add_sink_arguments,
    alert_labels,
    decode_alert,
    is_enabled,
    signature,
    to_alertmanager,
    verify_signature,
)
from meter.adapters.sinks.alertmanager import AlertmanagerSink, Due, Firing, alert_annotations
from meter.adapters.sinks.errors import error_for_status
from meter.adapters.sinks.webhook import webhook_headers
from meter.core.errors import ConfigError
from meter.core.outputs import cap_alert, marker_alert, window_json

T0 = 1_640_995_200_000  # 2022-01-01T00:00:00Z
MIN = 60_000
DAY = 1440 * MIN
NOW = 1_700_000_000_000


def record(value: dict[str, Any], ts: int = NOW) -> AlertRecord:
    body = json.dumps(value, separators=(",", ":")).encode()
    return decode_alert(body, [("meter-id", value["id"].encode())], timestamp_ms=ts)


def app_cap(threshold: float = 1.0, used: int = 450, severity: str = "critical") -> dict[str, Any]:
    return cap_alert(
        subject_type="app",
        subject="xbox-one-social",
        org_id="microsoft",
        cap_key="tier:enterprise:calls-15m",
        metric="calls",
        window=window_json("15m", T0, T0 + 15 * MIN),
        window_start_ms=T0,
        limit=450,
        used=used,
        threshold=threshold,
        severity=severity,
        crossed_at_ms=T0 + 7 * MIN + 29_000,
        event_id="e449",
        late=False,
        now_ms=NOW,
    ).value


def org_cap() -> dict[str, Any]:
    return cap_alert(
        subject_type="org",
        subject="microsoft",
        org_id="microsoft",
        cap_key="org:microsoft:records-month",
        metric="records",
        window=window_json("month", T0, T0 + 31 * DAY),
        window_start_ms=T0,
        limit=50_000_000,
        used=40_000_000,
        threshold=0.8,
        severity="warning",
        crossed_at_ms=T0 + 3 * DAY,
        event_id="e9",
        late=True,
        now_ms=NOW,
    ).value


def unknown_app(org: str | None) -> dict[str, Any]:
    return marker_alert(
        kind="unknown_app",
        severity="warning",
        subject_type="app",
        subject="mystery",
        org_id=org,
        day_start_ms=T0,
        day_end_ms=T0 + DAY,
        crossed_at_ms=T0 + 60_000,
        event_id="u1",
        late=False,
        now_ms=NOW,
        details={},
    ).value


def restricted() -> dict[str, Any]:
    return marker_alert(
        kind="restricted_use",
        severity="critical",
        subject_type="org",
        subject="microsoft",
        org_id="microsoft",
        day_start_ms=T0,
        day_end_ms=T0 + DAY,
        crossed_at_ms=T0 + 120_000,
        event_id="r1",
        late=False,
        now_ms=NOW,
        details={"app_id": "xbox-one-social", "recipient": "government", "rule": "notice"},
    ).value


# -- public surface ------------------------------------------------------------------------------
def test_public_api_is_pinned() -> None:
    assert sorted(sinks.__all__) == [
        "ActiveAlerts",
        "AlertRecord",
        "AlertmanagerSink",
        "Backoff",
        "DeliveryLoop",
        "PermanentError",
        "RetryableError",
        "Sink",
        "SinkError",
        "SinkMetrics",
        "SinkService",
        "SinkSettings",
        "StartPosition",
        "WebhookSink",
        "add_sink_arguments",
        "alert_annotations",
        "alert_labels",
        "decode_alert",
        "is_enabled",
        "signature",
        "to_alertmanager",
        "verify_signature",
    ]


# -- webhook signing -----------------------------------------------------------------------------
def test_signature_is_the_hmac_sha256_of_the_exact_body() -> None:
    body = b'{"id":"8fcf","kind":"cap","used":450}'
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert signature(body, "s3cret") == f"sha256={expected}"
    assert verify_signature(body, "s3cret", f"sha256={expected}")
    # The same JSON with other spacing, or another secret, does not verify.
    assert not verify_signature(
        b'{"id": "8fcf","kind":"cap","used":450}', "s3cret", f"sha256={expected}"
    )
    assert not verify_signature(body, "other", f"sha256={expected}")


def test_webhook_sends_the_published_bytes_with_signature_and_id_headers() -> None:
    published = b'{"id":"abc","kind":"cap",  "used":1}'  # odd spacing is kept as published
    alert = decode_alert(published, [("meter-id", b"abc")])
    assert alert.body == published
    assert webhook_headers(alert, "k") == {
        "Content-Type": "application/json",
        "X-Meter-Signature": "sha256=" + hmac.new(b"k", published, hashlib.sha256).hexdigest(),
        "X-Meter-Alert-Id": "abc",
    }


def test_decode_alert_takes_the_id_from_the_value_or_the_header() -> None:
    assert decode_alert(b'{"id":"a1"}').id == "a1"
    assert decode_alert(b'{"kind":"cap"}', [("meter-id", b"h1")]).id == "h1"
    for bad in (None, b"", b"not json", b"[1]", b'{"kind":"cap"}', b"\xff"):
        with pytest.raises(PermanentError):
            decode_alert(bad)


@pytest.mark.parametrize(
    ("status", "retry_after", "kind", "seconds"),
    [
        (200, None, None, None),
        (204, None, None, None),
        (500, None, RetryableError, None),
        (503, "7", RetryableError, 7.0),
        (429, "2", RetryableError, 2.0),
        (429, "Wed, 21 Oct 2015 07:28:00 GMT", RetryableError, None),
        (408, None, RetryableError, None),
        (400, None, PermanentError, None),
        (401, None, PermanentError, None),
        (404, None, PermanentError, None),
        (413, None, PermanentError, None),
        (302, None, PermanentError, None),
    ],
)
def test_http_status_classification(
    status: int, retry_after: str | None, kind: type[Exception] | None, seconds: float | None
) -> None:
    error = error_for_status(status, "detail", retry_after)
    if kind is None:
        assert error is None
        return
    assert type(error) is kind
    if isinstance(error, RetryableError):
        assert error.retry_after == seconds


# -- Alertmanager mapping ------------------------------------------------------------------------
def test_labels_of_an_app_cap_alert() -> None:
    assert alert_labels(app_cap()) == {
        "alertname": "MeterCapThreshold",
        "severity": "critical",
        "org": "microsoft",
        "app": "xbox-one-social",
        "subject_type": "app",
        "subject": "xbox-one-social",
        "cap": "tier:enterprise:calls-15m",
        "window": "15m",
        "window_start": "2022-01-01T00:00:00Z",
        "threshold": "1",
    }
    assert alert_labels(app_cap(0.8, 360, "warning"))["threshold"] == "0.8"


def test_labels_of_an_org_cap_alert_have_no_app() -> None:
    assert alert_labels(org_cap()) == {
        "alertname": "MeterCapThreshold",
        "severity": "warning",
        "org": "microsoft",
        "subject_type": "org",
        "subject": "microsoft",
        "cap": "org:microsoft:records-month",
        "window": "month",
        "window_start": "2022-01-01T00:00:00Z",
        "threshold": "0.8",
    }


def test_labels_of_unknown_app_alerts() -> None:
    assert alert_labels(unknown_app("acme")) == {
        "alertname": "MeterUnknownApp",
        "severity": "warning",
        "org": "acme",
        "app": "mystery",
        "subject_type": "app",
        "subject": "mystery",
        "window": "1d",
        "window_start": "2022-01-01T00:00:00Z",
    }
    assert "org" not in alert_labels(unknown_app(None))


def test_an_unknown_app_flood_alert_names_the_partition_and_the_limit() -> None:
    flood = marker_alert(
        kind="unknown_app_flood", severity="critical", subject_type="app", subject="*",
        org_id=None, day_start_ms=T0, day_end_ms=T0 + DAY, crossed_at_ms=T0 + 60_000,
        event_id="u101", late=False, now_ms=NOW,
        details={"routed_partition": "3", "alerts_per_day": "100"},
    ).value  # fmt: skip
    assert alert_labels(flood) == {
        "alertname": "MeterUnknownAppFlood",
        "severity": "critical",
        "app": "*",
        "subject_type": "app",
        "subject": "*",
        "window": "1d",
        "window_start": "2022-01-01T00:00:00Z",
    }
    summary = alert_annotations(flood)["summary"]
    assert summary == "more than 100 unknown apps called the API on routed partition 3 in one day"


def test_labels_of_a_restricted_use_alert() -> None:
    assert alert_labels(restricted()) == {
        "alertname": "MeterRestrictedUse",
        "severity": "critical",
        "org": "microsoft",
        "app": "xbox-one-social",
        "subject_type": "org",
        "subject": "microsoft",
        "window": "1d",
        "window_start": "2022-01-01T00:00:00Z",
        "recipient": "government",
    }


def test_annotations_of_a_cap_alert() -> None:
    assert alert_annotations(app_cap()) == {
        "summary": "app xbox-one-social reached 100% of cap tier:enterprise:calls-15m: "
        "450 of 450 calls in 15m",
        "description": "app xbox-one-social used 450 of 450 calls (100%) in the 15m window "
        "2022-01-01T00:00:00Z to 2022-01-01T00:15:00Z; the 100% threshold was crossed at "
        "2022-01-01T00:07:29Z by event e449.",
        "used": "450",
        "limit": "450",
        "window_end": "2022-01-01T00:15:00Z",
        "meter_id": app_cap()["id"],
    }
    late = alert_annotations(org_cap())
    assert late["description"].endswith("The crossing event arrived after its window had closed.")
    assert "limit" not in alert_annotations(unknown_app(None))
    assert "restricted recipient government" in alert_annotations(restricted())["summary"]


def test_alertmanager_payload_starts_at_the_crossing_and_ends_at_the_window_end() -> None:
    alert = record(app_cap())
    sent_at = T0 + 8 * MIN
    firing = to_alertmanager(alert, sent_at, min_firing_ms=MIN, generator_url="http://m/x")
    assert firing.alert_id == alert.id
    assert firing.ends_at_ms == T0 + 15 * MIN
    assert firing.payload == {
        "labels": alert_labels(alert.value),
        "annotations": alert_annotations(alert.value),
        "startsAt": "2022-01-01T00:07:29Z",
        "endsAt": "2022-01-01T00:15:00Z",
        "generatorURL": "http://m/x",
    }
    assert "generatorURL" not in to_alertmanager(alert, sent_at, 0).payload


def test_a_late_alert_fires_for_the_minimum_time_after_it_is_first_sent() -> None:
    alert = record(app_cap())
    firing = to_alertmanager(alert, NOW, min_firing_ms=5 * MIN)
    assert firing.ends_at_ms == NOW + 5 * MIN
    assert firing.payload["endsAt"] == "2023-11-14T22:18:20Z"
    # Without a minimum it is sent already resolved: endsAt is the window end.
    assert to_alertmanager(alert, NOW, 0).ends_at_ms == T0 + 15 * MIN


def test_an_alert_that_cannot_be_mapped_is_rejected() -> None:
    value = app_cap()
    del value["window"]
    with pytest.raises(PermanentError):
        to_alertmanager(record(value), NOW, 0)


# -- re-send and resolve on a fake clock -------------------------------------------------------
def _firing(alert_id: str, ends_at: int) -> Firing:
    return Firing(alert_id, {"labels": {"alertname": alert_id}}, ends_at)


def ids(due: Due) -> tuple[list[str], list[str]]:
    return [f.alert_id for f in due.firing], [f.alert_id for f in due.ended]


def test_active_alerts_are_resent_every_interval_and_resolved_at_their_end() -> None:
    active = ActiveAlerts(resend_ms=60_000)
    t = 1_000_000
    assert active.add(_firing("a", t + 150_000), t)
    assert active.add(_firing("b", t + 30_000), t)
    assert not active.add(_firing("a", t + 150_000), t)  # already tracked
    assert not active.add(_firing("a", t + 100_000), t)  # an earlier end changes nothing
    assert not active.add(_firing("old", t), t)  # already ended: nothing to keep firing
    assert active.next_due_ms() == t + 30_000
    assert ids(active.due(t + 29_999)) == ([], [])
    due = active.due(t + 30_000)
    assert ids(due) == ([], ["b"])  # b's window ended: the send resolves it
    active.sent(due, t + 30_000, ok=True)
    assert "b" not in active
    assert active.next_due_ms() == t + 60_000
    due = active.due(t + 60_000)
    assert ids(due) == (["a"], [])
    active.sent(due, t + 60_000, ok=True)
    assert active.next_due_ms() == t + 120_000
    due = active.due(t + 120_000)
    assert ids(due) == (["a"], [])
    active.sent(due, t + 120_000, ok=True)
    assert active.next_due_ms() == t + 150_000  # the end comes before the next re-send
    due = active.due(t + 150_000)
    assert ids(due) == ([], ["a"])
    active.sent(due, t + 150_000, ok=True)
    assert len(active) == 0
    assert active.next_due_ms() is None


def test_a_failed_resolve_is_retried_after_the_resend_interval() -> None:
    active = ActiveAlerts(resend_ms=60_000)
    active.add(_firing("a", 10_000), 0)
    due = active.due(10_000)
    assert ids(due) == ([], ["a"])
    active.sent(due, 10_000, ok=False)
    assert "a" in active
    assert ids(active.due(69_999)) == ([], [])
    due = active.due(70_000)
    assert ids(due) == ([], ["a"])
    active.sent(due, 70_000, ok=True)
    assert "a" not in active


def test_restored_alerts_are_sent_at_once() -> None:
    active = ActiveAlerts(resend_ms=60_000)
    active.add(_firing("a", 500_000), 1_000, send_now=True)
    assert ids(active.due(1_000)) == (["a"], [])


def test_a_later_end_replaces_the_tracked_one() -> None:
    active = ActiveAlerts(resend_ms=60_000)
    active.add(_firing("a", 100_000), 0)
    active.add(_firing("a", 400_000), 0)  # delivered again after a restart, held firing longer
    assert active.next_due_ms() == 60_000
    due = active.due(100_000)
    assert ids(due) == (["a"], [])
    assert due.firing[0].ends_at_ms == 400_000


def test_alertmanager_sink_keeps_alerts_firing_then_resolves_them() -> None:
    """The keep-alive ticks on a fake clock: what is POSTed, and when."""
    clock = [T0 / 1000 + 8 * 60]  # 00:08:00; the window ends at 00:15:00
    posts: list[tuple[int, list[str]]] = []

    class Recording(AlertmanagerSink):
        async def post(self, alerts: Iterable[Firing]) -> None:
            posts.append((round(clock[0] - T0 / 1000), [f.payload["endsAt"] for f in alerts]))

    metrics = SinkMetrics(CollectorRegistry())
    sink = Recording(
        cast(aiohttp.ClientSession, None),
        "http://am",
        metrics=metrics,
        resend_ms=3 * MIN,
        min_firing_ms=0,
        clock=lambda: clock[0],
    )

    async def scenario() -> None:
        await sink.deliver(record(app_cap()))
        assert (
            metrics.registry.get_sample_value("meter_sink_active_alerts", {"sink": "alertmanager"})
            == 1
        )
        while (wake := await sink.tick()) is not None:
            clock[0] = wake / 1000  # time passes until the next thing is due

    asyncio.run(scenario())
    # Sent at 8:00, re-sent at 11:00 and 14:00, sent once more at 15:00 (resolved), then forgotten.
    assert posts == [(t, ["2022-01-01T00:15:00Z"]) for t in (480, 660, 840, 900)]
    assert len(sink.active) == 0
    assert (
        metrics.registry.get_sample_value("meter_sink_active_alerts", {"sink": "alertmanager"}) == 0
    )


def test_alertmanager_sink_retries_a_failed_resend_and_drops_a_refused_alert() -> None:
    clock = [100.0]
    fail: list[Exception] = []

    class Failing(AlertmanagerSink):
        async def post(self, alerts: Iterable[Firing]) -> None:
            if fail:
                raise fail.pop(0)

    sink = Failing(
        cast(aiohttp.ClientSession, None),
        "http://am",
        metrics=SinkMetrics(CollectorRegistry()),
        resend_ms=10_000,
        min_firing_ms=0,
        clock=lambda: clock[0],
    )
    a = _firing("a", 1_000_000)
    b = _firing("b", 1_000_000)
    sink.active.add(a, 100_000)
    sink.active.add(b, 100_000)

    async def scenario() -> None:
        clock[0] = 110.0
        fail.append(RetryableError("HTTP 503"))
        assert await sink.tick() == 120_000  # both kept, tried again one interval later
        assert ("a" in sink.active, "b" in sink.active) == (True, True)
        clock[0] = 120.0
        # The batch is refused: each alert is tried alone; only the refused one is dropped.
        fail.extend([PermanentError("HTTP 400"), PermanentError("HTTP 400")])
        assert await sink.tick() == 130_000
        assert ("a" in sink.active, "b" in sink.active) == (False, True)

    asyncio.run(scenario())


# -- delivery and backoff ----------------------------------------------------------------------
def test_backoff_doubles_up_to_the_maximum() -> None:
    b = Backoff(base_s=0.5, max_s=30.0)
    assert [b.ceiling(n) for n in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert b.ceiling(10_000) == 30.0
    assert [b.delay(n, lambda: 0.0) for n in range(3)] == [0.5, 1.0, 2.0]
    assert [b.delay(n, lambda: 1.0) for n in range(3)] == [0.25, 0.5, 1.0]  # jitter: up to half off
    assert b.delay(0, lambda: 0.0, retry_after=7.0) == 7.0  # the receiver's Retry-After
    assert b.delay(0, lambda: 0.0, retry_after=3600.0) == 30.0  # ... up to the maximum


class FlakySink:
    name = "flaky"

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    async def deliver(self, alert: AlertRecord) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)


def run_delivery(sink: FlakySink, alert: AlertRecord) -> tuple[SinkMetrics, list[float]]:
    metrics = SinkMetrics(CollectorRegistry())
    delays: list[float] = []

    def rand() -> float:
        delays.append(0.0)
        return 0.0

    loop = DeliveryLoop(
        sink,
        bootstrap="unused:9092",
        topic="t",
        group="g",
        metrics=metrics,
        backoff=Backoff(0.001, 0.004),
        rand=rand,
    )
    asyncio.run(loop.deliver(alert))
    return metrics, delays


def outcome(metrics: SinkMetrics, sink: str, name: str) -> float:
    value = metrics.registry.get_sample_value(
        "meter_sink_deliveries_total", {"sink": sink, "outcome": name}
    )
    return value or 0.0


def test_delivery_retries_until_the_sink_accepts() -> None:
    sink = FlakySink([RetryableError("HTTP 500"), RetryableError("timeout"), OSError("bug?")])
    metrics, delays = run_delivery(sink, record(app_cap()))
    assert sink.calls == 4
    assert len(delays) == 3
    assert (outcome(metrics, "flaky", "retried"), outcome(metrics, "flaky", "delivered")) == (3, 1)


def test_a_permanent_error_is_rejected_without_retry() -> None:
    sink = FlakySink([PermanentError("HTTP 400")])
    metrics, delays = run_delivery(sink, record(app_cap()))
    assert sink.calls == 1
    assert delays == []
    assert outcome(metrics, "flaky", "rejected") == 1
    assert outcome(metrics, "flaky", "delivered") == 0


def test_the_delivery_group_is_per_sink() -> None:
    loop = DeliveryLoop(
        FlakySink([]),
        bootstrap="x:1",
        topic="t",
        group="meter",
        metrics=SinkMetrics(CollectorRegistry()),
        backoff=Backoff(1, 1),
    )
    assert loop.group_id == "meter-sink-flaky"


# -- settings ------------------------------------------------------------------------------------
def test_settings_defaults_and_environment() -> None:
    s = SinkSettings.load({}, {})
    assert s == SinkSettings()
    assert not is_enabled(s)
    assert (s.alertmanager_resend_ms, s.batch, s.backoff_ms, s.max_backoff_ms) == (
        60_000,
        100,
        500,
        30_000,
    )
    assert s.start == StartPosition("earliest")
    env = {
        "METER_WEBHOOK_URL": "https://hooks.example/meter?team=ops",
        "METER_WEBHOOK_SECRET": "s3cret",
        "METER_ALERTMANAGER_URL": "http://am:9093/",
        "METER_ALERTMANAGER_RESEND": "30s",
        "METER_SINK_BATCH": "10",
        "METER_SINK_START": "1d",
    }
    s = SinkSettings.load({"sink_batch": "20"}, env)
    assert is_enabled(s)
    assert s.webhook_url == "https://hooks.example/meter?team=ops"
    assert s.alertmanager_url == "http://am:9093"
    assert (s.alertmanager_resend_ms, s.batch) == (30_000, 20)
    assert s.start == StartPosition("since", DAY)
    assert SinkSettings.load({"sink_start": "LATEST"}, {}).start == StartPosition("latest")


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        ({"webhook_url": "ftp://x", "webhook_secret": "s"}, "--webhook-url / METER_WEBHOOK_URL"),
        ({"webhook_url": "http://"}, "--webhook-url / METER_WEBHOOK_URL"),
        ({"webhook_url": "http://h:99999/"}, "--webhook-url / METER_WEBHOOK_URL"),
        ({"webhook_url": "http://h/"}, "--webhook-secret / METER_WEBHOOK_SECRET"),
        ({"alertmanager_url": "am:9093"}, "--alertmanager-url / METER_ALERTMANAGER_URL"),
        ({"alertmanager_url": "http://am/?x=1"}, "--alertmanager-url / METER_ALERTMANAGER_URL"),
        ({"alertmanager_resend": "0s"}, "--alertmanager-resend / METER_ALERTMANAGER_RESEND"),
        ({"alertmanager_resend": "soon"}, "--alertmanager-resend / METER_ALERTMANAGER_RESEND"),
        (
            {"alertmanager_generator_url": "nope"},
            "--alertmanager-generator-url / METER_ALERTMANAGER_GENERATOR_URL",
        ),
        ({"sink_batch": "0"}, "--sink-batch / METER_SINK_BATCH"),
        ({"sink_start": "yesterday"}, "--sink-start / METER_SINK_START"),
        (
            {"sink_backoff": "2s", "sink_max_backoff": "1s"},
            "--sink-max-backoff / METER_SINK_MAX_BACKOFF",
        ),
    ],
)
def test_settings_errors_name_the_field(flags: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        SinkSettings.load(flags, {})
    assert info.value.field == field


def test_secrets_are_hidden_when_settings_are_printed() -> None:
    s = SinkSettings.load(
        {
            "webhook_url": "https://bot:hunter2@hooks.example/x?token=abcd",
            "webhook_secret": "s3cret-value",
            "alertmanager_url": "http://admin:pw123@am:9093",
        },
        {},
    )
    for text in (repr(s), str(s), f"{s}", f"{s!r}"):
        assert "s3cret-value" not in text
        assert "hunter2" not in text
        assert "abcd" not in text
        assert "pw123" not in text
        assert "webhook_secret=***" in text
        assert "https://bot:***@hooks.example/x?***" in text
        assert "http://admin:***@am:9093" in text
    assert s.webhook_secret == "s3cret-value"


def test_sink_flags_feed_the_settings() -> None:
    parser = argparse.ArgumentParser()
    add_sink_arguments(parser)
    args = parser.parse_args(
        [
            "--alertmanager-url",
            "http://am:9093",
            "--alertmanager-resend",
            "15s",
            "--sink-start",
            "latest",
        ]
    )
    s = SinkSettings.load(vars(args), {"METER_ALERTMANAGER_RESEND": "99s"})
    assert (s.alertmanager_url, s.alertmanager_resend_ms, s.start.mode) == (
        "http://am:9093",
        15_000,
        "latest",
    )

"""Alert sinks against the real broker and real receivers on 127.0.0.1: a webhook receiver that
fails on purpose, and a real Alertmanager (Debian package prometheus-alertmanager)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import subprocess
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from meter.adapters.broker import free_port
from meter.adapters.sinks import SinkService, SinkSettings, StartPosition
from meter.core.events import parse_time
from meter.core.outputs import cap_alert, marker_alert, window_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")  # Debian package prometheus-alertmanager
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
SECRET = "test-secret-\u00e9"
MIN = 60_000


def now_ms() -> int:
    return int(time.time() * 1000)


def cap_value(i: int, *, window_end_ms: int | None = None) -> dict[str, Any]:
    end = window_end_ms if window_end_ms is not None else 1_640_995_200_000 + 15 * MIN
    start = end - 15 * MIN
    return cap_alert(
        subject_type="app",
        subject=f"app-{i}",
        org_id="acme",
        cap_key="tier:std:calls-15m",
        metric="calls",
        window=window_json("15m", start, end),
        window_start_ms=start,
        limit=10,
        used=10,
        threshold=1.0,
        severity="critical",
        crossed_at_ms=min(end - 1000, now_ms() - 2000),
        event_id=f"e{i}",
        late=False,
        now_ms=now_ms(),
    ).value


def produce_alerts(
    bootstrap: str, topic: str, values: list[dict[str, Any]], timestamp_ms: int | None = None
) -> list[bytes]:
    """Alerts as the worker publishes them: compact JSON, key <type>:<subject>, header meter-id."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    bodies = []
    try:
        for v in values:
            body = json.dumps(v, separators=(",", ":")).encode()
            bodies.append(body)
            producer.send(
                topic,
                key=f"{v['subject_type']}:{v['subject']}".encode(),
                value=body,
                headers=[("meter-id", v["id"].encode())],
                timestamp_ms=timestamp_ms,
            )
        producer.flush(timeout=30)
    finally:
        producer.close()
    return bodies


def group_lag(bootstrap: str, topic: str, group: str) -> int:
    """End offsets minus the group's committed offsets (everything, if it never committed);
    -1 when the broker cannot tell yet."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="meter-sink-tests")
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        ends = consumer.end_offsets(parts)
        try:
            committed = admin.list_group_offsets({group: None}).get(group, {})
        except KafkaError:  # e.g. the coordinator is still loading: ask again later
            return -1
        lag = 0
        for tp in parts:
            done = committed.get(tp)
            lag += ends[tp] - (done.offset if done is not None and done.offset >= 0 else 0)
        return lag
    finally:
        admin.close()
        consumer.close()


async def eventually(
    check: Callable[[], Any], within: float, what: str, interval: float = 0.25
) -> Any:
    """Poll `check` (a blocking function, run in a thread) until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# -- webhook -------------------------------------------------------------------------------------
class Receiver:
    """A webhook receiver that misbehaves on purpose: the first requests follow `script`
    ("500", "slow" = no answer before the client's timeout, "drop" = connection closed, "429");
    `down` answers 503 to everything; `poison` is an alert id always answered 400."""

    def __init__(self, script: list[str], poison: str) -> None:
        self.script = deque(script)
        self.poison = poison
        self.down = False
        self.requests: list[str] = []
        self.answered_ok: list[str] = []
        self.bodies: dict[str, bytes] = {}
        self.bad: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        alert_id = request.headers.get("X-Meter-Alert-Id", "")
        self.requests.append(alert_id)
        signed = request.headers.get("X-Meter-Signature", "")
        if (
            signed != "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            or request.headers.get("Content-Type") != "application/json"
            or json.loads(body)["id"] != alert_id
        ):
            self.bad.append(alert_id)
            return web.Response(status=400, text="bad signature or headers")
        if alert_id == self.poison:
            return web.Response(status=400, text="we never accept this one")
        if self.down:
            return web.Response(status=503)
        if self.script:
            action = self.script.popleft()
            if action == "slow":
                await asyncio.sleep(3)  # the client gave up after 1 s
                return web.Response(status=500)
            if action == "drop":
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=500)
            if action == "429":
                return web.Response(status=429, headers={"Retry-After": "1"})
            return web.Response(status=int(action))
        response = web.Response(status=200, text="ok")
        await response.prepare(request)
        await response.write_eof()
        # Counted only once the 2xx answer is written back to the sink.
        self.answered_ok.append(alert_id)
        self.bodies[alert_id] = body
        return response


async def serve(receiver: Receiver) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def test_webhook_gets_every_alert_once_despite_failures_and_restarts(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique: Callable[[str], str]
) -> None:
    topic = make_topic("alerts", partitions=3)
    group = unique("meter")
    sink_group = f"{group}-sink-webhook"
    first = [cap_value(i) for i in range(30)]
    poison = cap_value(999)
    later = [cap_value(100 + i) for i in range(10)]
    receiver = Receiver(["500"] * 5 + ["slow", "drop", "429", "502"], poison["id"])

    async def scenario() -> None:
        runner, port = await serve(receiver)
        settings = SinkSettings(
            webhook_url=f"http://127.0.0.1:{port}/hook",
            webhook_secret=SECRET,
            webhook_timeout_ms=1000,
            batch=8,
            backoff_ms=50,
            max_backoff_ms=400,
        )
        try:
            # 1. Failures, retries and a poison alert; everything is committed once delivered.
            bodies = await asyncio.to_thread(
                produce_alerts, kafka_bootstrap, topic, [*first[:15], poison, *first[15:]]
            )
            registry = CollectorRegistry()
            service = SinkService(settings, registry)
            await service.start(kafka_bootstrap, topic, group)
            try:
                await eventually(
                    lambda: (
                        len(set(receiver.answered_ok)) >= len(first)
                        and group_lag(kafka_bootstrap, topic, sink_group) == 0
                    ),
                    90,
                    "every alert delivered and committed",
                )
            finally:
                await service.stop()
            assert sorted(receiver.answered_ok) == sorted(v["id"] for v in first)
            assert receiver.requests.count(poison["id"]) == 1  # rejected, never retried
            assert not receiver.script  # every scripted failure happened and was retried
            sent = {
                v["id"]: b for v, b in zip([*first[:15], poison, *first[15:]], bodies, strict=True)
            }
            assert all(receiver.bodies[i] == sent[i] for i in receiver.bodies)  # the exact bytes
            assert (
                sample(registry, "meter_sink_deliveries_total", sink="webhook", outcome="delivered")
                == 30
            )
            assert (
                sample(registry, "meter_sink_deliveries_total", sink="webhook", outcome="rejected")
                == 1
            )
            assert (
                sample(registry, "meter_sink_deliveries_total", sink="webhook", outcome="retried")
                >= 9
            )
            assert sample(registry, "meter_sink_lag_alerts", sink="webhook") == 0

            # 2. The receiver is down: the sink retries, and is stopped before it succeeds.
            receiver.down = True
            await asyncio.to_thread(produce_alerts, kafka_bootstrap, topic, later)
            service = SinkService(settings, CollectorRegistry())
            await service.start(kafka_bootstrap, topic, group)
            try:
                await eventually(
                    lambda: receiver.requests.count(later[0]["id"]) >= 3, 60, "retries while down"
                )
            finally:
                await service.stop()
            assert await asyncio.to_thread(group_lag, kafka_bootstrap, topic, sink_group) == 10

            # 3. A new process (same group) delivers what was left, and nothing already delivered.
            receiver.down = False
            service = SinkService(settings, CollectorRegistry())
            await service.start(kafka_bootstrap, topic, group)
            try:
                await eventually(
                    lambda: (
                        len(set(receiver.answered_ok)) >= 40
                        and group_lag(kafka_bootstrap, topic, sink_group) == 0
                    ),
                    60,
                    "the rest delivered after the restart",
                )
                await asyncio.sleep(1.0)  # room for an unwanted re-delivery to show up
            finally:
                await service.stop()
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
    counts = Counter(receiver.answered_ok)
    assert set(counts) == {v["id"] for v in first + later}
    assert [i for i, n in counts.items() if n > 1] == []  # each answered 2xx exactly once
    assert receiver.bad == []
    assert receiver.requests.count(poison["id"]) == 1


def group_state(bootstrap: str, group: str) -> str:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="meter-sink-tests")
    try:
        described = admin.describe_groups([group])
    except KafkaError:
        return ""
    finally:
        admin.close()
    info = described.get(group, {}) if isinstance(described, dict) else {}
    return str(info.get("group_state") or info.get("state") or "")


def test_a_new_sink_group_starts_where_sink_start_says(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique: Callable[[str], str]
) -> None:
    topic = make_topic("alerts", partitions=2)
    old = [cap_value(200 + i) for i in range(4)]
    recent = [cap_value(300 + i) for i in range(3)]
    newest = cap_value(400)
    produce_alerts(kafka_bootstrap, topic, old, timestamp_ms=now_ms() - 2 * 3_600_000)
    produce_alerts(kafka_bootstrap, topic, recent)
    receiver = Receiver([], poison="")

    async def scenario() -> None:
        runner, port = await serve(receiver)

        def settings(start: StartPosition) -> SinkSettings:
            return SinkSettings(
                webhook_url=f"http://127.0.0.1:{port}/hook",
                webhook_secret=SECRET,
                backoff_ms=50,
                max_backoff_ms=200,
                start=start,
            )

        try:
            # --sink-start 1h: only the alerts of the last hour.
            group = unique("since")
            service = SinkService(settings(StartPosition("since", 3_600_000)))
            await service.start(kafka_bootstrap, topic, group)
            try:
                await eventually(
                    lambda: group_lag(kafka_bootstrap, topic, f"{group}-sink-webhook") == 0,
                    60,
                    "the recent alerts delivered",
                )
            finally:
                await service.stop()
            assert sorted(receiver.answered_ok) == sorted(v["id"] for v in recent)

            # --sink-start latest: nothing already on the topic, only what comes next.
            receiver.answered_ok.clear()
            group = unique("latest")
            service = SinkService(settings(StartPosition("latest")))
            await service.start(kafka_bootstrap, topic, group)
            try:
                await eventually(
                    lambda: group_state(kafka_bootstrap, f"{group}-sink-webhook") == "Stable",
                    60,
                    "the sink's group to have its partitions",
                )
                await asyncio.sleep(2)  # the start position is applied right after assignment
                await asyncio.to_thread(produce_alerts, kafka_bootstrap, topic, [newest])
                await eventually(lambda: receiver.answered_ok, 30, "the newest alert")
                await asyncio.sleep(1)
            finally:
                await service.stop()
            assert receiver.answered_ok == [newest["id"]]
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


# -- Alertmanager --------------------------------------------------------------------------------
class Alertmanager:
    """A real Alertmanager process on 127.0.0.1 with the repository's configuration."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.tmp = tmp
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> None:
        assert ALERTMANAGER.exists(), (
            f"{ALERTMANAGER} is missing: apt-get install -y prometheus-alertmanager"
        )
        self.runs += 1
        storage = self.tmp / f"storage-{self.runs}"  # fresh: Alertmanager forgets every alert
        storage.mkdir()
        self.log = (self.tmp / f"alertmanager-{self.runs}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                str(ALERTMANAGER),
                f"--config.file={ALERTMANAGER_CONFIG}",
                f"--storage.path={storage}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"alertmanager exited: {self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                if self.get("/-/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"alertmanager not ready: {self.tail()}")

    def tail(self) -> str:
        return (self.tmp / f"alertmanager-{self.runs}.log").read_text(errors="replace")[-2000:]

    def get(self, path: str) -> tuple[int, Any]:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw.strip().startswith((b"[", b"{")) else raw)

    def alerts(self) -> dict[str, dict[str, Any]]:
        """GET /api/v2/alerts (default filters), by the meter_id annotation."""
        _, body = self.get("/api/v2/alerts")
        return {a["annotations"].get("meter_id", "?"): a for a in body}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None
            self.log.close()


def test_alertmanager_keeps_alerts_firing_until_the_window_ends(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    topic = make_topic("alerts", partitions=2)
    group = unique("meter")
    am = Alertmanager(tmp_path, free_port())
    am.start()
    try:
        t = now_ms()
        ends = t - t % 1000 + 35_000
        short = cap_value(1, window_end_ms=ends)  # its window ends in ~35 s
        long = marker_alert(  # restricted use by an org; its "day" ends in two hours
            kind="restricted_use",
            severity="critical",
            subject_type="org",
            subject="acme",
            org_id="acme",
            day_start_ms=ends - 86_400_000,
            day_end_ms=ends + 7_200_000,
            crossed_at_ms=t - 5000,
            event_id="r1",
            late=False,
            now_ms=t,
            details={"app_id": "app-7", "recipient": "government", "rule": "notice"},
        ).value
        over = cap_value(2)  # a window of 2022: it reaches Alertmanager already resolved
        produce_alerts(kafka_bootstrap, topic, [short, long, over])
        settings = SinkSettings(
            alertmanager_url=am.url,
            alertmanager_resend_ms=2000,
            alertmanager_min_firing_ms=0,
            alertmanager_timeout_ms=2000,
            backoff_ms=100,
            max_backoff_ms=1000,
        )

        def both_active() -> dict[str, dict[str, Any]] | None:
            got = am.alerts()
            ok = all(
                got.get(v["id"], {}).get("status", {}).get("state") == "active"
                for v in (short, long)
            )
            return got if ok else None

        async def scenario() -> None:
            registry = CollectorRegistry()
            service = SinkService(settings, registry)
            await service.start(kafka_bootstrap, topic, group)
            try:
                got = await eventually(both_active, 30, "both alerts active in Alertmanager")
                check_alert(got[short["id"]], short, ends)
                check_alert(got[long["id"]], long, ends + 7_200_000)
                assert got[long["id"]]["labels"] == {
                    "alertname": "MeterRestrictedUse",
                    "severity": "critical",
                    "org": "acme",
                    "app": "app-7",
                    "subject_type": "org",
                    "subject": "acme",
                    "window": "1d",
                    "window_start": long["window"]["start"],
                    "recipient": "government",
                }
                assert over["id"] not in got
                # Re-sent periodically: Alertmanager's updatedAt moves on.
                first_update = got[short["id"]]["updatedAt"]
                await eventually(
                    lambda: am.alerts()[short["id"]]["updatedAt"] > first_update, 10, "a re-send"
                )
                # Alertmanager restarts and forgets everything: the re-sends bring it back.
                await asyncio.to_thread(am.stop)
                await asyncio.to_thread(am.start)
                assert await asyncio.to_thread(am.alerts) == {}
                await eventually(both_active, 15, "alerts back after an Alertmanager restart")
                assert (
                    await asyncio.to_thread(
                        group_lag, kafka_bootstrap, topic, f"{group}-sink-alertmanager"
                    )
                    == 0
                )
            finally:
                await service.stop()

            # Both restart: the new sink has nothing left to deliver, yet re-reads what may
            # still be firing and sends it again.
            await asyncio.to_thread(am.stop)
            await asyncio.to_thread(am.start)
            registry = CollectorRegistry()
            service = SinkService(settings, registry)
            await service.start(kafka_bootstrap, topic, group)
            try:
                got = await eventually(both_active, 15, "alerts restored after a sink restart")
                check_alert(got[short["id"]], short, ends)
                assert over["id"] not in got
                assert sample(registry, "meter_sink_active_alerts", sink="alertmanager") == 2
                assert now_ms() < ends - 2000, "the test was too slow to see the window end"
                # The window ends: the alert is resolved, and Alertmanager no longer lists it;
                # the other alert stays active.
                assert short["id"] in await asyncio.to_thread(am.alerts)
                await eventually(
                    lambda: short["id"] not in am.alerts(),
                    (ends - now_ms()) / 1000 + 10,
                    "the alert resolved",
                    0.1,
                )
                assert now_ms() >= ends
                got = await asyncio.to_thread(am.alerts)
                assert got[long["id"]]["status"]["state"] == "active"
                await eventually(
                    lambda: sample(registry, "meter_sink_active_alerts", sink="alertmanager") == 1,
                    5,
                    "the sink forgets the resolved alert",
                )
            finally:
                await service.stop()

        asyncio.run(scenario())
    finally:
        am.stop()


def check_alert(got: dict[str, Any], value: dict[str, Any], ends_ms: int) -> None:
    assert got["status"]["state"] == "active"
    assert parse_time(got["startsAt"]) == parse_time(value["crossed_at"])
    assert parse_time(got["endsAt"]) == ends_ms
    assert got["annotations"]["meter_id"] == value["id"]
    if value["kind"] == "cap":
        assert got["labels"] == {
            "alertname": "MeterCapThreshold",
            "severity": "critical",
            "org": "acme",
            "app": value["subject"],
            "subject_type": "app",
            "subject": value["subject"],
            "cap": "tier:std:calls-15m",
            "window": "15m",
            "window_start": value["window"]["start"],
            "threshold": "1",
        }
        assert got["annotations"]["used"] == "10"
        assert got["annotations"]["limit"] == "10"


def test_the_alertmanager_binary_is_installed() -> None:
    """CI installs the Debian package; a missing binary fails here rather than skipping."""
    assert ALERTMANAGER.exists(), "apt-get install -y prometheus-alertmanager"
    out = subprocess.run([str(ALERTMANAGER), "--version"], capture_output=True, check=True)
    assert b"alertmanager, version" in out.stdout + out.stderr

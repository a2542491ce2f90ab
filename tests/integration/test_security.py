"""Security end to end, on a broker of its own: `meter kafka start --secure` (TLS,
SASL/SCRAM-SHA-512 users, StandardAuthorizer ACLs) on free loopback ports.

A worker, the usage store and the API (user `meter`) and the simulator (user `producer`) connect
with credentials from variables and files, and the counts come out exact; the producer user
writes the input topic and can neither read it nor write elsewhere; no password appears in any
process's log, on a /metrics page or in an error message.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import (
    GroupAuthorizationFailedError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)

from meter.adapters.broker import free_port
from meter.adapters.policy_file import bundled_policy_path
from meter.demo.api_check import check_api
from meter.sim.compare import compare
from meter.sim.truth import load_truth
from tests.harness.kafka import read_all
from tests.harness.processes import REPO, WorkerProcess, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

POLICY = bundled_policy_path()
GRACE_MS = 1000
USERS = ("admin", "meter", "producer")


@dataclass
class Secured:
    """The secured broker started by `meter kafka start --secure`, and what its start printed."""

    root: Path
    env: dict[str, str]
    """What `meter kafka` itself ran with (state dir, ports)."""
    printed: str

    @property
    def credentials(self) -> Path:
        return self.root / "kafka-secure" / "credentials"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.env['METER_KAFKA_PORT']}"

    def password(self, user: str) -> str:
        return (self.credentials / f"{user}.password").read_text().strip()

    def passwords(self) -> list[str]:
        return [self.password(u) for u in USERS]

    def client_env(self, user: str, *, by_value: bool = False) -> dict[str, str]:
        """The variables of `<user>.env`; `by_value`: the password itself instead of its file."""
        lines = (self.credentials / f"{user}.env").read_text().splitlines()
        env = dict(line.split("=", 1) for line in lines if line)
        if by_value:
            del env["METER_KAFKA_PASSWORD_FILE"]
            env["METER_KAFKA_PASSWORD"] = self.password(user)
        return env

    def client_args(self, user: str) -> dict[str, Any]:
        """kafka-python arguments for the test's own clients, written here, not by meter."""
        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": user,
            "sasl_plain_password": self.password(user),
            "ssl_cafile": str(self.credentials / "ca.crt"),
        }


def meter_cli(
    *args: str, env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    return subprocess.run(
        [sys.executable, "-m", "meter.cli", *args],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secure")
    env = {
        "METER_STATE_DIR": str(root),
        "METER_KAFKA_PORT": str(free_port()),
        "METER_KAFKA_CONTROLLER_PORT": str(free_port()),
    }
    done = meter_cli("kafka", "start", "--secure", "--timeout", "150", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        yield Secured(root, env, done.stdout + done.stderr)
    finally:
        meter_cli("kafka", "stop", "--secure", env=env)


def _ensure(secured: Secured, *topics: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=secured.bootstrap, **secured.client_args("admin"))
    try:
        for topic in topics:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        admin.close()


def _page(url: str) -> str:
    """The body of a GET, also when the status says it failed (503 while not ready)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as error:
        return str(error.read().decode())
    except OSError:
        return ""


def _ready(port: int) -> bool:
    page = _page(f"http://127.0.0.1:{port}/readyz")
    return bool(page) and json.loads(page).get("status") == "ready"


def _metric_values(url: str, name: str) -> list[float]:
    pattern = rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$"
    return [float(v) for v in re.findall(pattern, _page(url), re.MULTILINE)]


def test_start_prints_variables_and_keeps_every_secret_in_private_files(secured: Secured) -> None:
    state = secured.root / "kafka-secure"
    assert f"export METER_KAFKA_PASSWORD_FILE={secured.credentials / 'meter.password'}" in (
        secured.printed
    )
    assert f"export METER_KAFKA_BOOTSTRAP={secured.bootstrap}" in secured.printed
    for secret in secured.passwords():
        assert secret not in secured.printed
    private = [
        state / "server.properties",
        state / "tls" / "ca.key",
        state / "tls" / "broker-keystore.pem",
    ]
    private += [secured.credentials / f"{u}.{kind}" for u in USERS for kind in ("password", "env")]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for directory in (state, state / "tls", secured.credentials):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert not list(state.glob("*.args")), "the format's argument file (passwords) was left behind"
    # The only client listener speaks SASL_SSL; the controller's takes the admin user only.
    properties = (state / "server.properties").read_text()
    assert f"listeners=SASL_SSL://{secured.bootstrap},CONTROLLER://" in properties
    assert "super.users=User:admin\n" in properties
    assert "allow.everyone.if.no.acl.found=false" in properties


def test_worker_store_api_and_simulator_count_exactly_with_credentials(
    secured: Secured, tmp_path: Path
) -> None:
    meter_env = secured.client_env("meter")
    web_port, api_port = free_port(), free_port()
    worker = WorkerProcess(
        ["worker", "--policy", str(POLICY), "--partitions", "2", "--grace", "1s", "--tick", "1s",
         "--idle-timeout", "3s", "--web-port", str(web_port), "--data-dir", str(tmp_path / "w")],
        tmp_path / "worker.log", web_port, tmp_path / "w", env=meter_env,
    )  # fmt: skip
    database = str(tmp_path / "meter.db")
    store = WorkerProcess(
        ["store", "--database", database], tmp_path / "store.log", 0, tmp_path / "s",
        env=meter_env,
    )  # fmt: skip
    api = WorkerProcess(
        ["api", "--policy", str(POLICY), "--database", database, "--port", str(api_port)],
        tmp_path / "api.log", api_port, tmp_path / "a",
        env=secured.client_env("meter", by_value=True),
    )  # fmt: skip
    processes = [worker, store, api]
    metrics = f"http://127.0.0.1:{web_port}/metrics"
    try:
        wait_until(
            lambda: _ready(web_port), 120,
            what="the worker to be ready", abort=worker.died,
        )  # fmt: skip
        truth_path = tmp_path / "truth.json"
        # -v: kafka-python logs its admin client's whole configuration, password included.
        sim = meter_cli(
            "-v", "simulate", "--calls", "2000", "--start", "2022-03-01", "--end", "2022-03-03",
            "--seed", "11", "--policy", str(POLICY), "--truth", str(truth_path),
            env=secured.client_env("producer", by_value=True),
        )  # fmt: skip
        assert sim.returncode == 0, sim.stderr[-3000:]
        truth = load_truth(truth_path)
        wait_until(
            lambda: sum(_metric_values(metrics, "meter_events_total")) >= truth.sent["calls"],
            120, what="every call counted", abort=worker.died,
        )  # fmt: skip
        last_end_s = (max(w.end_ms for w in truth.windows) + GRACE_MS) / 1000

        def all_closed() -> bool:
            marks = _metric_values(metrics, "meter_watermark_seconds")
            pending = _metric_values(metrics, "meter_outbox_pending_records")
            return bool(marks) and min(marks) >= last_end_s and not any(pending or [1])

        wait_until(all_closed, 120, what="every window closed", abort=worker.died)
        boot, args = secured.bootstrap, secured.client_args("meter")
        windows = [json.loads(r.value) for r in read_all(boot, "usage-windows", client_args=args)]
        alerts = [json.loads(r.value) for r in read_all(boot, "usage-alerts", client_args=args)]
        result = compare(truth, windows, alerts, grace_ms=GRACE_MS)
        assert result.ok, result.summary()
        assert result.windows_matched > 1000
        assert len(alerts) == len(truth.alerts) > 0
        # The store and the API read through their own credentials (by file and by value).
        answer = check_api(f"http://127.0.0.1:{api_port}", truth, len(alerts), timeout_s=120)
        assert answer.ok, answer.detail
        pages = _page(metrics) + _page(f"http://127.0.0.1:{api_port}/readyz")
        for process in processes:
            process.stop()
    finally:
        for process in processes:
            process.ensure_gone()
    assert "Kafka SASL_SSL (SCRAM-SHA-512) as meter" in worker.log_text()
    assert "(SASL_SSL (SCRAM-SHA-512) as meter)" in api.log_text()
    # Not vacuous: the simulator's client did log its configuration, with the password hidden.
    assert "'sasl_plain_password': '***'" in sim.stderr
    texts = {p.log_path.name: p.log_text() for p in processes}
    texts |= {"simulate": sim.stdout + sim.stderr, "pages": pages, "kafka start": secured.printed}
    for name, text in texts.items():
        for secret in secured.passwords():
            assert secret not in text, f"a password appears in {name}"


def test_the_producer_writes_the_input_topic_and_nothing_else(secured: Secured) -> None:
    _ensure(secured, "api-calls", "usage-alerts", "elsewhere")
    boot = secured.bootstrap
    producer = KafkaProducer(bootstrap_servers=boot, acks="all", **secured.client_args("producer"))
    try:
        producer.send("api-calls", b"not an event: dead-lettered").get(timeout=30)
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send("usage-alerts", b"forged alert").get(timeout=30)
    finally:
        producer.close()
    # A read is refused although the records are there (an assigned consumer, no group).
    reader = KafkaConsumer(
        bootstrap_servers=boot, enable_auto_commit=False, **secured.client_args("producer")
    )
    try:
        parts = [TopicPartition("api-calls", p) for p in (0, 1)]
        reader.assign(parts)
        reader.seek_to_beginning(*parts)

        def read_for_a_while() -> None:
            for _ in range(100):
                assert not reader.poll(timeout_ms=300), "the producer read the input topic"

        with pytest.raises(TopicAuthorizationFailedError):
            read_for_a_while()
    finally:
        reader.close()
    group_reader = KafkaConsumer(
        "api-calls", bootstrap_servers=boot, group_id="meter", enable_auto_commit=False,
        **secured.client_args("producer"),
    )  # fmt: skip
    try:
        with pytest.raises(GroupAuthorizationFailedError):
            group_reader.poll(timeout_ms=10_000)
    finally:
        group_reader.close()
    # meter's own user has no business with other topics either.
    meter = KafkaProducer(bootstrap_servers=boot, acks="all", **secured.client_args("meter"))
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            meter.send("elsewhere", b"x").get(timeout=30)
    finally:
        meter.close()


def test_errors_name_the_problem_and_never_a_password(secured: Secured, tmp_path: Path) -> None:
    _ensure(secured, "usage-alerts", "elsewhere")
    # A topic without ACLs for the user looks missing to a reader without a group (aiokafka
    # gives it nothing, silently): the API, not ready, says both.
    port = free_port()
    api = WorkerProcess(
        ["api", "--policy", str(POLICY), "--database", str(tmp_path / "a.db"), "--port",
         str(port), "--quota-topic", "elsewhere"],
        tmp_path / "api.log", port, tmp_path / "a", env=secured.client_env("meter"),
    )  # fmt: skip
    try:
        waiting = wait_until(
            lambda: "may not read" in (text := _page(f"http://127.0.0.1:{port}/readyz")) and text,
            60, what="the API to say why it waits", abort=api.died,
        )  # fmt: skip
        api.stop()
    finally:
        api.ensure_gone()
    assert "topic elsewhere does not exist yet (start a worker), or user meter may not read it" in (
        waiting
    )
    # A write the ACLs refuse: the simulator, as the producer, into the alerts topic.
    env = secured.client_env("producer", by_value=True)
    denied = meter_cli(
        "simulate", "--calls", "20", "--topic", "usage-alerts", "--truth", str(tmp_path / "t.json"),
        env=env,
    )  # fmt: skip
    assert denied.returncode == 1
    assert "TopicAuthorizationFailedError" in denied.stderr
    # Two places for one password: the message names both variables, never the value.
    both = {**secured.client_env("meter"), "METER_KAFKA_PASSWORD": secured.password("meter")}
    refused = meter_cli("store", "--database", str(tmp_path / "x.db"), env=both)
    assert refused.returncode == 2
    assert "METER_KAFKA_PASSWORD: set it or METER_KAFKA_PASSWORD_FILE, not both" in refused.stderr
    for text in (denied.stdout + denied.stderr, refused.stdout + refused.stderr, api.log_text()):
        for secret in secured.passwords():
            assert secret not in text

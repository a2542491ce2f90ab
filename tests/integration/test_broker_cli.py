"""`meter kafka start | status | stop` against a second, throw-away broker on free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from meter.adapters.broker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def meter(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meter.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, METER_STATE_DIR=str(tmp_path / "state"))
    env["METER_KAFKA_PORT"] = str(free_port())
    env["METER_KAFKA_CONTROLLER_PORT"] = str(free_port())
    env.pop("METER_KAFKA_BOOTSTRAP", None)
    return env


def test_start_status_second_start_and_stop(cli_env: dict[str, str], tmp_path: Path) -> None:
    port = cli_env["METER_KAFKA_PORT"]
    try:
        first = meter(cli_env, "kafka", "start")
        assert first.returncode == 0, first.stderr
        assert f"bootstrap servers: 127.0.0.1:{port}" in first.stdout
        assert (tmp_path / "state" / "kafka" / "data" / "meta.properties").is_file()

        status = meter(cli_env, "kafka", "status")
        assert status.returncode == 0
        assert status.stdout.startswith("running")

        second = meter(cli_env, "kafka", "start")
        assert second.returncode == 0
        assert "already running" in second.stdout

        with socket.create_connection(("127.0.0.1", int(port)), timeout=5):
            pass
    finally:
        stop = meter(cli_env, "kafka", "stop")
    assert stop.returncode == 0
    assert stop.stdout.strip() == "Kafka broker stopped"
    after = meter(cli_env, "kafka", "status")
    assert after.returncode == 3
    assert after.stdout.strip() == "not running"
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", int(port)), timeout=2),
    ):
        pass


def test_failed_start_exits_non_zero_with_the_brokers_own_error(cli_env: dict[str, str]) -> None:
    # Hold the controller port so the JVM starts, fails to bind, and exits.
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", int(cli_env["METER_KAFKA_CONTROLLER_PORT"])))
        blocker.listen()
        result = meter(cli_env, "kafka", "start")
    assert result.returncode == 1
    assert "exited with status" in result.stderr
    assert "Address already in use" in result.stderr
    assert meter(cli_env, "kafka", "status").returncode == 3


def test_bad_port_is_a_configuration_error_naming_the_field(cli_env: dict[str, str]) -> None:
    cli_env["METER_KAFKA_PORT"] = "http"
    result = meter(cli_env, "kafka", "start")
    assert result.returncode == 2
    assert "--port / METER_KAFKA_PORT" in result.stderr

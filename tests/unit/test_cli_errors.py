"""A worker that cannot start says why in one line, with the fix, and a documented exit status:
no client-library logs, no traceback. (No broker needed: nothing starts.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from meter.adapters.broker import free_port

REPO = Path(__file__).resolve().parents[2]
POLICY = str(REPO / "meter" / "examples" / "case-2022.yaml")


def worker(*args: str, tmp_path: Path) -> tuple[int, list[str]]:
    # A free metrics port unless the test picks one: the default (6066) may be held by a worker
    # or demo running on the same machine, and the port is checked before Kafka.
    port = [] if "--web-port" in args else ["--web-port", str(free_port())]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "meter.cli",
            "worker",
            "--data-dir",
            str(tmp_path / "d"),
            *port,
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "METER_STATE_DIR": str(tmp_path)},
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()


def test_an_unreachable_broker(tmp_path: Path) -> None:
    code, lines = worker(
        "--policy", POLICY, "--bootstrap", "127.0.0.1:1", "--connect-timeout", "2s",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert code == 69
    assert lines[-1].startswith("meter: cannot reach Kafka at 127.0.0.1:1 (connection refused)")
    assert "meter kafka start" in lines[-1]
    # At most one notice that it is waiting; no client logs, no traceback.
    assert len(lines) <= 2, lines
    assert not any("Traceback" in line or "kafka." in line for line in lines)


def test_a_policy_file_that_cannot_be_read(tmp_path: Path) -> None:
    code, lines = worker(
        "--policy", str(tmp_path / "missing.yaml"), "--bootstrap", "127.0.0.1:1",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert code == 2
    assert lines == [
        f"meter: policy error: cannot read policy file {tmp_path / 'missing.yaml'}: No such file "
        "or directory (--policy / METER_POLICY)"
    ]


def test_a_data_dir_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, lines = worker(
        "--policy", POLICY, "--bootstrap", "127.0.0.1:1", "--data-dir", str(blocker / "data"),
        tmp_path=tmp_path,
    )  # fmt: skip
    assert code == 2
    assert lines == [
        f"meter: configuration error: --data-dir / METER_DATA_DIR: cannot use {blocker / 'data'}:"
        " Not a directory"
    ]


def test_a_metrics_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = worker(
            "--policy", POLICY, "--bootstrap", "127.0.0.1:1", "--web-port", str(port),
            tmp_path=tmp_path,
        )  # fmt: skip
    assert code == 2
    assert lines == [
        f"meter: configuration error: --web-port / METER_WEB_PORT: cannot listen on "
        f"127.0.0.1:{port} (Address already in use): give each worker its own port"
    ]


@pytest.mark.parametrize(
    ("setting", "value", "field"),
    [("--grace", "soon", "--grace / METER_GRACE"), ("--partitions", "0", "--partitions")],
)
def test_a_bad_setting(tmp_path: Path, setting: str, value: str, field: str) -> None:
    code, lines = worker("--policy", POLICY, setting, value, tmp_path=tmp_path)
    assert code == 2
    assert len(lines) == 1
    assert lines[0].startswith(f"meter: configuration error: {field}")


GOOD_POLICY = """
version: 1
tiers:
  std:
    caps:
      - {id: calls-15m, metric: calls, window: 15m, limit: 10}
orgs:
  acme: {}
apps:
  acme-web: {org: acme, tier: std}
"""


def meter(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    return subprocess.run(
        [sys.executable, "-m", "meter.cli", *args],
        cwd=REPO,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_worker_without_a_policy_exits_2_naming_the_setting(tmp_path: Path) -> None:
    result = meter("worker", "--bootstrap", "127.0.0.1:1", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2, result.stderr
    assert "--policy / METER_POLICY" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("mistake", "path"),
    [
        ("      - {id: calls-15m, metric: calls, window: 15m, limt: 10}", "tiers.std.caps[0].limt"),
        (
            "      - {id: calls-15m, metric: calls, window: 15x, limit: 10}",
            "tiers.std.caps[0].window",
        ),
        (
            "      - {id: calls-15m, metric: call, window: 15m, limit: 10}",
            "tiers.std.caps[0].metric",
        ),
    ],
    ids=["unknown-field", "bad-window", "bad-metric"],
)
def test_a_policy_typo_exits_2_naming_the_field(tmp_path: Path, mistake: str, path: str) -> None:
    policy = tmp_path / "policy.yaml"
    lines = GOOD_POLICY.splitlines()
    lines[5] = mistake
    policy.write_text("\n".join(lines) + "\n")
    # Given as a flag, and through the environment.
    for result in (
        meter("worker", "--policy", str(policy), "--bootstrap", "127.0.0.1:1"),
        meter("worker", "--bootstrap", "127.0.0.1:1", env={"METER_POLICY": str(policy)}),
    ):
        assert result.returncode == 2, result.stderr
        assert f"policy error at {path}:" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_bad_settings_exit_2_naming_the_flag_and_variable(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(GOOD_POLICY)
    for args, env, label in [
        (["--partitions", "0"], {}, "--partitions / METER_PARTITIONS"),
        ([], {"METER_GRACE": "soon"}, "--grace / METER_GRACE"),
        (["--web-port", "99999"], {}, "--web-port / METER_WEB_PORT"),
        (["--store", "redis"], {}, "--store / METER_STORE"),
        (["--session-timeout", "1s"], {}, "--session-timeout / METER_SESSION_TIMEOUT"),
    ]:
        result = meter("worker", "--policy", str(policy), "--bootstrap", "127.0.0.1:1", *args,
                       env=env)  # fmt: skip
        assert result.returncode == 2, (args, env, result.stderr)
        assert label in result.stderr, (args, env, result.stderr)


def test_policy_check_accepts_the_bundled_example() -> None:
    result = meter("policy", "check", "meter/examples/case-2022.yaml")
    assert result.returncode == 0, result.stderr
    assert "case-2022.yaml: OK" in result.stdout
    for name in ("org microsoft", "app azure-logic-apps-fairfax", "tier:enterprise:calls-15m"):
        assert name in result.stdout

"""End to end: configuration mistakes stop `meter worker` at once with exit status 2 and a message
naming the setting or the policy field; the bundled example policy checks clean."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from meter.adapters.broker import free_port
from meter.adapters.runner import prepare_topics
from meter.adapters.topics import TopicSpec, ensure_topics
from meter.config import WorkerSettings
from tests.harness.processes import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

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


def test_partitions_that_do_not_match_the_state_topics_exit_2(
    tmp_path: Path, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(GOOD_POLICY)
    group = unique("meter")
    ensure_topics(kafka_bootstrap, [TopicSpec(f"{group}-routed", 2)])
    result = meter(
        "worker", "--policy", str(policy), "--bootstrap", kafka_bootstrap, "--group", group,
        "--input-topic", unique("calls"), "--alerts-topic", unique("alerts"),
        "--windows-topic", unique("windows"), "--dlq-topic", unique("dlq"),
        "--partitions", "3", "--web-port", str(free_port()), "--data-dir", str(tmp_path / "d"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "--partitions / METER_PARTITIONS" in result.stderr
    assert f"{group}-routed has 2 partitions" in result.stderr


def test_missing_topics_are_created_with_their_retention_and_timestamps(
    tmp_path: Path, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    s = WorkerSettings(
        policy=tmp_path / "policy.yaml",
        bootstrap=kafka_bootstrap,
        input_topic=unique("calls"),
        dlq_topic=unique("dlq"),
        alerts_topic=unique("alerts"),
        windows_topic=unique("windows"),
        group=unique("meter"),
        partitions=3,
    )
    counts = prepare_topics(s, kafka_bootstrap)
    assert counts == {
        s.routed_topic: 3,
        s.changelog_topic: 3,
        s.alerts_topic: 3,
        s.windows_topic: 3,
    }
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        names = [s.input_topic, s.changelog_topic, s.alerts_topic]
        found = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )["topic"]
        configs = {name: {k: v["value"] for k, v in found[name].items()} for name in names}
    finally:
        admin.close()
    # ids are remembered by the time records reach the broker, whatever the gateways' clocks
    assert configs[s.input_topic]["message.timestamp.type"] == "LogAppendTime"
    assert configs[s.input_topic]["retention.ms"] == str(7 * 86_400_000)
    assert configs[s.changelog_topic]["cleanup.policy"] == "compact"
    assert configs[s.alerts_topic]["retention.ms"] == str(90 * 86_400_000)


def test_policy_check_accepts_the_bundled_example() -> None:
    result = meter("policy", "check", "meter/examples/case-2022.yaml")
    assert result.returncode == 0, result.stderr
    assert "case-2022.yaml: OK" in result.stdout
    for name in ("org microsoft", "app azure-logic-apps-fairfax", "tier:enterprise:calls-15m"):
        assert name in result.stdout

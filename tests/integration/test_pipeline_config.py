"""End to end: a worker whose partition count does not match its state topics exits 2 naming the
setting; the topics it creates have their partitions, retention and timestamps. (Mistakes that
need no broker are unit tests: tests/unit/test_cli_errors.py.)"""

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
from meter.worker_settings import WorkerSettings
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
        quota_topic=unique("quota"),
        group=unique("meter"),
        partitions=3,
    )
    counts = prepare_topics(s, kafka_bootstrap)
    assert counts == {
        s.routed_topic: 3,
        s.changelog_topic: 3,
        s.alerts_topic: 3,
        s.windows_topic: 3,
        s.quota_topic: 3,
    }
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        names = [s.input_topic, s.changelog_topic, s.alerts_topic, s.quota_topic]
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
    # the quota feed keeps the last record per subject and cap
    assert configs[s.quota_topic]["cleanup.policy"] == "compact"
    assert configs[s.alerts_topic]["retention.ms"] == str(90 * 86_400_000)

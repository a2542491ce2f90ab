"""deploy/prometheus: the configuration and rules load in promtool, their unit tests pass, every
rule is covered by a test, and the conventions the alert comments promise hold."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.harness.promql import PROMETHEUS, REPO, RULE_FILES, promtool, rule_docs

TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
COMPOSE_PROMETHEUS = REPO / "deploy" / "compose" / "prometheus.yml"
RECORD_NAME = re.compile(r"^[a-z_]+:[a-z_]+:[a-z0-9_]+$")


def run_promtool(*args: str | Path, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"


def alert_rules() -> list[dict[str, Any]]:
    return [rule for _, rule in rule_docs() if "alert" in rule]


def test_promtool_checks_the_local_config() -> None:
    result = run_promtool("check", "config", "prometheus.yml")
    assert_ok(result)
    assert "2 rule files found" in result.stdout


def test_promtool_checks_the_compose_config_as_mounted(tmp_path: Path) -> None:
    # Compose mounts deploy/compose/prometheus.yml next to deploy/prometheus/rules in the container.
    shutil.copy(COMPOSE_PROMETHEUS, tmp_path / "prometheus.yml")
    shutil.copytree(PROMETHEUS / "rules", tmp_path / "rules")
    result = run_promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert_ok(result)
    assert "2 rule files found" in result.stdout


def test_promtool_checks_the_rules() -> None:
    assert [p.name for p in RULE_FILES] == ["alerts.yml", "recording.yml"]
    assert_ok(run_promtool("check", "rules", *RULE_FILES))


def test_promtool_rule_unit_tests_pass() -> None:
    assert TEST_FILES, "no promtool tests in deploy/prometheus/tests"
    result = run_promtool("test", "rules", *TEST_FILES)
    assert_ok(result)
    assert result.stdout.count("SUCCESS") == len(TEST_FILES)


def test_promtool_tests_fail_when_a_rule_breaks(tmp_path: Path) -> None:
    """The unit tests can fail: raise the critical cap threshold in a copy and run them."""
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS, copy)
    alerts = copy / "rules" / "alerts.yml"
    text = alerts.read_text()
    assert text.count("          >= 1\n") == 1
    alerts.write_text(text.replace("          >= 1\n", "          >= 1.5\n"))
    assert_ok(run_promtool("check", "rules", alerts, cwd=copy))
    result = run_promtool("test", "rules", *sorted((copy / "tests").glob("*.yml")), cwd=copy)
    assert result.returncode != 0
    assert "MeterCapExceeded" in result.stdout + result.stderr


def test_every_rule_is_unit_tested() -> None:
    """Each alert has a case where it fires and one where it does not; each recording rule has
    an exact expected value."""
    firing: set[str] = set()
    silent: set[str] = set()
    exprs: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", ()):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
            exprs |= {check["expr"] for check in case.get("promql_expr_test", ())}
    alerts = {rule["alert"] for rule in alert_rules()}
    records = {rule["record"] for _, rule in rule_docs() if "record" in rule}
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - silent == set(), "alerts never tested silent"
    assert records - exprs == set(), "recording rules without an expected value"


def test_alerts_carry_severity_summary_and_description() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert set(rule["annotations"]) >= {"summary", "description"}, rule["alert"]
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        assert "$labels" in text or "$value" in text, rule["alert"]
        assert rule["alert"].startswith("Meter"), rule["alert"]


def test_cap_alerts_fire_without_waiting() -> None:
    # A `for:` longer than a cap's window would keep a hard cap on a short window from firing.
    caps = [r for r in alert_rules() if "meter_cap_utilization_ratio" in r["expr"]]
    assert {r["alert"] for r in caps} == {"MeterCapUsageHigh", "MeterCapExceeded"}
    for rule in caps:
        assert rule.get("for", "0s") in {"0s", "0m"}, rule["alert"]


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for _, rule in rule_docs():
        if "record" in rule:
            assert RECORD_NAME.match(rule["record"]), rule["record"]
            metric, operation = rule["record"].split(":")[1:]
            assert metric.startswith("meter_"), rule["record"]
            assert metric in rule["expr"] or f":{metric}:" in rule["expr"], rule["record"]
            window = re.search(r"(?:rate|increase)(\d+[smhd])$", operation)
            if window and "[" in rule["expr"]:  # a rate5m takes the rate over [5m]
                assert f"[{window.group(1)}]" in rule["expr"], rule["record"]


def test_alerts_select_the_scrape_job_of_the_configs() -> None:
    for config in (PROMETHEUS / "prometheus.yml", COMPOSE_PROMETHEUS):
        jobs = [c["job_name"] for c in yaml.safe_load(config.read_text())["scrape_configs"]]
        assert "meter" in jobs, config
    for rule in alert_rules():
        if "up{" in rule["expr"]:
            assert 'job="meter"' in rule["expr"], rule["alert"]

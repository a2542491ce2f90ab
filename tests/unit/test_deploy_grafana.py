"""deploy/grafana: the dashboard's PromQL parses (promtool) and reads only series a worker exports
or a recording rule writes, with labels they have; its uid, variables and thresholds are fixed;
the provisioning files point at it."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.promql import REPO, expression_problems, promtool

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "meter.json"

# Concrete values for Grafana's variables, so that an expression is plain PromQL.
VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "org": "microsoft|openai",
    "app": "azure|ads",
}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def targets() -> list[tuple[str, str]]:
    """(panel title / refId, expression) of every query of the dashboard."""
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in VARIABLES:
            raise AssertionError(f"unknown Grafana variable ${name} in {expr}")
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def promtool_parse(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Parse expressions with Prometheus' own parser: as recording rules in a rules file."""
    rules = [{"record": f"dashboard:expr_{i}:check", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dashboard_has_a_fixed_uid_and_its_variables() -> None:
    board = dashboard()
    assert board["uid"] == "meter-usage"
    assert "id" not in board or board["id"] is None
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "org", "app"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(board["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"]


def test_panel_ids_are_unique_and_the_panels_are_all_there() -> None:
    all_panels = list(panels(dashboard()["panels"]))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    exprs = " ".join(expr for _, expr in targets())
    for needed in (
        "meter_cap_usage",
        "meter_cap_limit",
        "meter_cap_utilization_ratio",
        "meter_calls_total",
        "meter_records_total",
        "increase(meter_alerts_total",
        "meter_events_total",
        "meter_consumer_lag_records",
        "meter_event_time_lag_seconds",
        "meter_dead_letter_events_total",
        "meter_late_events_total",
        "meter_duplicate_events_total",
        "histogram_quantile(0.5, sum by (le) (rate(meter_record_processing_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(meter_record_processing_seconds_bucket",
        "meter_state_keys",
        "meter_outbox_pending_records",
    ):
        assert needed in exprs, needed


def test_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard()["panels"]):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_utilization_panels_use_the_alert_thresholds() -> None:
    found = 0
    for panel in panels(dashboard()["panels"]):
        if any("meter_cap_utilization_ratio" in t["expr"] for t in panel.get("targets", [])):
            defaults = panel["fieldConfig"]["defaults"]
            assert defaults["unit"] == "percentunit", panel["title"]
            steps = [s["value"] for s in defaults["thresholds"]["steps"]]
            assert steps == [None, 0.8, 1.0], panel["title"]
            found += 1
    assert found >= 2


def test_every_expression_parses_in_promtool(tmp_path: Path) -> None:
    exprs = [substitute(expr) for _, expr in targets()]
    result = promtool_parse(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_promtool_parse_rejects_bad_promql(tmp_path: Path) -> None:
    assert promtool_parse(["sum by (org) (rate(meter_calls_total[5m])"], tmp_path).returncode != 0


@pytest.mark.parametrize(("where", "expr"), targets(), ids=[w for w, _ in targets()])
def test_expression_reads_exported_series(where: str, expr: str) -> None:
    assert expression_problems(substitute(expr)) == []


def test_variable_queries_read_exported_series() -> None:
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, query
        selector, label = match.groups()
        assert expression_problems(selector) == []
        assert expression_problems(f"count by ({label}) ({selector})") == []


def test_provisioning_points_at_the_dashboard() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "meter.yml").read_text())
    (entry,) = provider["providers"]
    assert entry["type"] == "file"
    # An absolute container path: where compose mounts deploy/grafana/dashboards.
    assert entry["options"]["path"].startswith("/")
    datasources = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
    sources = yaml.safe_load(datasources.read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True

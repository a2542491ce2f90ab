"""PromQL in deploy/ against the metrics a worker really exports: the catalogue of exported series,
a small PromQL reader (metric names, label matchers, grouping labels) and the check of every rule
expression. The Grafana and Prometheus deploy tests import the helpers from here.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.promql import (
    exported_series,
    expression_problems,
    read_promql,
    rule_docs,
)


def test_read_promql_finds_names_matchers_and_grouping() -> None:
    ref = read_promql(
        'sum by (job, org) (rate(meter_calls_total{org=~"a|b", job="meter"}[5m] offset 1h))\n'
        "/ on (job) group_left sum without (instance) (up) > bool 0.5 unless absent(x:y:z)"
    )
    assert sorted(ref.selectors) == [
        ("meter_calls_total", frozenset({"org", "job"})),
        ("up", frozenset()),
        ("x:y:z", frozenset()),
    ]
    assert ref.grouping == {"job", "org", "instance"}
    assert read_promql("histogram_quantile(0.99, sum by (le) (rate(a_bucket[1m])))").names == {
        "a_bucket"
    }
    assert read_promql('count(meter_x{reason="by (foo)"})').grouping == set()


def test_the_catalogue_has_every_metric_of_the_readme() -> None:
    names = exported_series()
    for family in ("meter_events_total", "meter_calls_total", "meter_dead_letter_events_total"):
        assert family in names
    assert names["meter_calls_total"] == {"org"}
    assert names["meter_record_processing_seconds_bucket"] == {"le"}
    assert names["meter_cap_utilization_ratio"] == {
        "subject_type",
        "subject",
        "cap",
        "metric",
        "window",
    }
    assert names["meter_consumer_lag_records"] == {"topic", "partition"}


def test_expression_check_reports_what_is_wrong() -> None:
    assert expression_problems('sum by (org) (rate(meter_calls_total{org="a"}[5m]))') == []
    assert expression_problems("rate(meter_call_total[5m])") == [
        "meter_call_total is not exported by the worker nor recorded by a rule"
    ]
    assert expression_problems('meter_cap_usage{org="acme"}') == [
        "meter_cap_usage has no label org"
    ]
    assert expression_problems("sum by (org) (meter_events_total)") == [
        "no metric here has label org"
    ]
    assert expression_problems("job:meter_events:rate5m > 0 and up == 1") == []


@pytest.mark.parametrize(
    "rule",
    [rule for _, rule in rule_docs()],
    ids=[rule.get("alert") or rule.get("record") for _, rule in rule_docs()],
)
def test_rule_reads_only_series_that_exist(rule: dict[str, Any]) -> None:
    assert expression_problems(rule["expr"]) == []

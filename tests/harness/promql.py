"""The deploy files' PromQL against what a worker exports: the catalogue of series, a small
PromQL reader, and promtool."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from meter.adapters.outages import KafkaLink, LinkCollector
from meter.adapters.policy_file import bundled_policy_path, read_policy
from meter.adapters.sinks.metrics import SinkMetrics
from meter.adapters.telemetry import Telemetry, WorkerCollector
from meter.adapters.watchdog import ProgressWatchdog, WatchdogCollector

REPO = Path(__file__).resolve().parents[2]


PROMETHEUS = REPO / "deploy" / "prometheus"


RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))


# Labels Prometheus attaches to every scraped series (job, instance) or that the Kubernetes
# relabelling in deploy/ adds (pod, namespace).
TARGET_LABELS = frozenset({"job", "instance", "pod", "namespace"})


# Series Prometheus itself writes for every target or rule; any label goes on ALERTS.
SYNTHETIC = {
    "up": frozenset(),
    "scrape_duration_seconds": frozenset(),
    "scrape_samples_scraped": frozenset(),
    "ALERTS": None,
    "ALERTS_FOR_STATE": None,
}


def promtool() -> str:
    """The promtool binary (Debian package `prometheus`); a missing one fails, never skips."""
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if found is None:
        pytest.fail("promtool not found: install the Debian package `prometheus` (scripts/setup)")
    return found


# -- what a worker exports -------------------------------------------------------------------
_SUFFIXES = {
    "counter": (("_total", ()),),
    "gauge": (("", ()),),
    "histogram": (("_bucket", ("le",)), ("_sum", ()), ("_count", ())),
    "summary": (("", ("quantile",)), ("_sum", ()), ("_count", ())),
}


def _series_of(name: str, kind: str, labels: tuple[str, ...]) -> dict[str, frozenset[str]]:
    return {name + sfx: frozenset(labels + extra) for sfx, extra in _SUFFIXES[kind]}


@cache
def exported_series() -> dict[str, frozenset[str]]:
    """Every series name a worker exports (`_total`, `_bucket`... included; no `_created`, which
    the worker disables) and its labels: the metrics of a `Telemetry` and of the alert sinks, and
    the gauge families of a `WorkerCollector` over an idle worker, of its Kafka link and of its
    progress watchdog. Label names come from the
    metric objects, so this follows the code without depending on how metrics are updated."""
    policy = read_policy(bundled_policy_path())
    telemetry = Telemetry(CollectorRegistry(), policy)
    # The alert sinks run in the worker process and register in the registry it passes them.
    sinks = SinkMetrics(CollectorRegistry())
    out: dict[str, frozenset[str]] = {}
    for metric in [*vars(telemetry).values(), *vars(sinks).values()]:
        if isinstance(metric, MetricWrapperBase):
            for desc in metric.describe():
                out |= _series_of(desc.name, desc.type, tuple(metric._labelnames))
    idle = SimpleNamespace(cap_usages=list, partition_states=list, consumer_lag=dict, now=time.time)
    collectors = (
        WorkerCollector(idle, policy, 100),
        LinkCollector(KafkaLink("127.0.0.1:9")),
        WatchdogCollector(ProgressWatchdog(120.0, 600.0)),
    )
    for collector in collectors:
        for family in collector.collect():
            out |= _series_of(family.name, family.type, tuple(family._labelnames))  # type: ignore[attr-defined]
    return out


# -- reading PromQL --------------------------------------------------------------------------
@dataclass
class Reference:
    """What an expression reads: selectors (name -> matcher label names), grouping labels."""

    selectors: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.selectors}


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")


_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^{}]*)\}")


_IDENT = re.compile(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()")


_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
    | {"and", "or", "unless", "offset", "inf", "nan"}
)


def read_promql(expr: str) -> Reference:
    """Metric names with their matcher labels, and grouping labels, of one PromQL expression."""
    ref = Reference()
    text = re.sub(r"#[^\n]*", " ", expr)
    text = _STRING.sub('""', text)
    for match in _GROUPING.finditer(text):
        ref.grouping.update(x.strip() for x in match.group(1).split(",") if x.strip())
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", text)
    text = re.sub(r"@\s*[0-9.a-z()]+", " ", text)
    for match in _SELECTOR.finditer(text):
        labels = frozenset(_MATCHER.findall(match.group(2)))
        ref.selectors.append((match.group(1) or "", labels))
    text = _SELECTOR.sub(" ", text)
    for name in _IDENT.findall(text):
        if name.lower() not in _KEYWORDS:
            ref.selectors.append((name, frozenset()))
    return ref


# -- checking expressions --------------------------------------------------------------------
def rule_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield path, rule


@cache
def recorded_series() -> dict[str, frozenset[str]]:
    """Recording rules and the labels their series can carry (their grouping labels)."""
    out: dict[str, frozenset[str]] = {}
    for _, rule in rule_docs():
        if "record" in rule:
            ref = read_promql(rule["expr"])
            labels = set(ref.grouping)
            for name, _ in ref.selectors:
                labels |= out.get(name, frozenset())
            out[rule["record"]] = frozenset(labels)
    return out


def known_labels(name: str) -> frozenset[str] | None:
    """The labels series `name` can have (None: any), or KeyError when nothing exports it."""
    if name in SYNTHETIC:
        found = SYNTHETIC[name]
        return None if found is None else found | TARGET_LABELS
    if ":" in name:
        return recorded_series()[name] | TARGET_LABELS
    return exported_series()[name] | TARGET_LABELS


def expression_problems(expr: str) -> list[str]:
    """Unknown metric names, matchers on labels the metric lacks, grouping by absent labels."""
    problems: list[str] = []
    ref = read_promql(expr)
    available: set[str] = set(TARGET_LABELS)
    for name, matchers in ref.selectors:
        if not name:
            problems.append("selector without a metric name")
            continue
        try:
            labels = known_labels(name)
        except KeyError:
            problems.append(f"{name} is not exported by the worker nor recorded by a rule")
            continue
        if labels is None:
            continue
        available |= labels
        problems += [f"{name} has no label {m}" for m in sorted(matchers - labels - {"__name__"})]
    problems += [f"no metric here has label {g}" for g in sorted(ref.grouping - available)]
    return problems

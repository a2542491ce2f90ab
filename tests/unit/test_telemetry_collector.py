"""The worker's scrape-time gauges: named, so a restricted scrape does not walk them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, generate_latest

from meter.adapters.telemetry import PartitionState, WorkerCollector
from meter.core.ledger import CapUsage
from meter.core.policy import load_policy
from tests.harness.ledger import POLICY


class Observed:
    def __init__(self) -> None:
        self.walks = 0

    def cap_usages(self) -> Iterable[CapUsage]:
        self.walks += 1
        yield CapUsage("app", "a1", "calls-15m", "calls", "15m", 0, 900_000, 5, 10)

    def partition_states(self) -> Iterable[PartitionState]:
        yield PartitionState(0, 1_000, 2_000, {"windows": 3, "ids": 4}, 1)

    def consumer_lag(self) -> Mapping[tuple[str, int], int]:
        return {("input", 0): 7}

    def now(self) -> float:
        return 10.0

    def not_ready(self) -> list[str]:
        return []


def test_describe_names_what_collect_yields_and_a_restricted_scrape_skips_it() -> None:
    observed = Observed()
    collector = WorkerCollector(observed, load_policy(POLICY), max_apps=10)
    assert [m.name for m in collector.describe()] == [m.name for m in collector.collect()]
    registry = CollectorRegistry()
    registry.register(collector)
    walks = observed.walks
    full = generate_latest(registry).decode()
    assert observed.walks == walks + 1
    assert 'meter_cap_usage{cap="calls-15m"' in full
    restricted = generate_latest(registry.restricted_registry(["meter_events_total"]))
    assert observed.walks == walks + 1
    assert restricted == b""
    only_lag = generate_latest(registry.restricted_registry(["meter_consumer_lag_records"]))
    assert b'meter_consumer_lag_records{partition="0",topic="input"} 7.0' in only_lag

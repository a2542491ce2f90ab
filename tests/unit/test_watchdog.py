"""The progress watchdog: stalled when records wait and the position does not move; exit only
after the longer bound, counted while Kafka answers."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from meter.adapters.watchdog import ProgressWatchdog, Stall, WatchdogCollector


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_consumer_that_moves_or_has_nothing_to_do_is_never_stalled() -> None:
    clock = FakeClock()
    dog = ProgressWatchdog(60, 300, clock=clock)
    for i in range(100):
        dog.observe("router", (i,), lag=500)  # moves every time
        dog.observe("counter", (0,), lag=0)  # idle: nothing waits
        clock.now += 10
    assert dog.stalls() == []
    assert dog.overdue() is None


def test_no_progress_with_records_waiting_is_a_stall_then_an_exit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    dog = ProgressWatchdog(60, 300, clock=clock)
    dog.observe("counter", (5,), lag=10)
    clock.now += 59
    dog.observe("counter", (5,), lag=12)
    assert dog.stalls() == []
    clock.now += 1
    with caplog.at_level(logging.WARNING):
        dog.observe("counter", (5,), lag=14)
        dog.observe("counter", (5,), lag=14)
    assert dog.stalls() == [Stall("counter", 60.0, 14)]
    assert dog.problems() == ["counter stalled: no progress for 60s with 14 record(s) waiting"]
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert dog.overdue() is None
    clock.now += 240
    dog.observe("counter", (5,), lag=20)
    assert dog.overdue() == Stall("counter", 300.0, 20)


def test_moving_again_clears_the_stall() -> None:
    clock = FakeClock()
    dog = ProgressWatchdog(60, 300, clock=clock)
    dog.observe("store", (1,), lag=3)
    clock.now += 120
    dog.observe("store", (1,), lag=3)
    assert dog.stalls()
    dog.observe("store", (2,), lag=3)
    assert dog.stalls() == []
    clock.now += 59
    dog.observe("store", (2,), lag=3)
    assert dog.stalls() == []


def test_time_while_kafka_is_unreachable_is_a_stall_but_does_not_count_towards_the_exit() -> None:
    clock = FakeClock()
    dog = ProgressWatchdog(60, 300, clock=clock)
    dog.observe("feed", (1,), lag=3)
    for _ in range(100):  # 1000 s without Kafka
        clock.now += 10
        dog.observe("feed", (1,), lag=3, kafka_up=False)
    assert dog.stalls() == [Stall("feed", 1000.0, 3)]
    assert dog.overdue() is None
    for _ in range(29):
        clock.now += 10
        dog.observe("feed", (1,), lag=3)
    assert dog.overdue() is None
    clock.now += 10
    dog.observe("feed", (1,), lag=3)
    assert dog.overdue() == Stall("feed", 1300.0, 3)


def test_the_metrics_show_each_consumer_and_its_stall() -> None:
    clock = FakeClock()
    dog = ProgressWatchdog(60, 300, clock=clock)
    registry = CollectorRegistry()
    registry.register(WatchdogCollector(dog))
    dog.observe("router", (1,), lag=0)
    dog.observe("counter", (1,), lag=7)
    clock.now += 90
    dog.observe("router", (1,), lag=0)
    dog.observe("counter", (1,), lag=7)
    value = registry.get_sample_value
    assert value("meter_stalled", {"consumer": "router"}) == 0.0
    assert value("meter_stalled", {"consumer": "counter"}) == 1.0
    assert value("meter_stalled_seconds", {"consumer": "counter"}) == 90.0
    assert value("meter_stalled_seconds", {"consumer": "router"}) == 0.0

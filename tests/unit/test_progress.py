"""Event-time progress: the minimum over input partitions, idleness, partitions that join late,
rebalances and restarts (`meter.core.ledger.progress`), and what a router reports and pauses
(`meter.adapters.sources`)."""

from __future__ import annotations

from meter.adapters.sources import SourceTracker
from meter.core.ledger import Progress

T = 1_646_136_000_000  # 2022-03-01T12:00:00Z
S = 1_000
NOW = 1_800_000_000_000  # the routers' clock


def test_the_watermark_is_the_minimum_over_every_input_partition() -> None:
    p = Progress()
    # One router reads partitions 0 and 1 of 3: partition 2 is unknown, nothing moves.
    assert not p.report(3, NOW, {0: (T + 50 * S, False), 1: (T + 10 * S, False)})
    assert (p.event_wm, p.close_wm) == (None, None)
    assert p.report(3, NOW, {2: (T + 30 * S, False)})
    assert (p.event_wm, p.close_wm) == (T + 10 * S, T + 10 * S)
    # A partition read far ahead (a skewed backlog, a gateway clock) moves nothing.
    assert not p.report(3, NOW, {0: (T + 3_600 * S, False)})
    assert p.event_wm == T + 10 * S
    assert p.report(3, NOW, {1: (T + 20 * S, False)})
    assert p.event_wm == T + 20 * S


def test_an_active_partition_that_routed_nothing_yet_holds_everything() -> None:
    p = Progress()
    assert not p.report(2, NOW, {0: (T, False), 1: (None, False)})
    assert p.event_wm is None
    assert p.report(2, NOW, {1: (T + S, False)})
    assert p.event_wm == T


def test_idle_partitions_leave_the_minimum_and_come_back_with_their_next_event() -> None:
    p = Progress()
    p.report(2, NOW, {0: (T + 100 * S, False), 1: (T, False)})
    assert p.event_wm == T
    p.report(2, NOW + S, {1: (T, True)})  # partition 1 is caught up and silent
    assert p.event_wm == T + 100 * S
    p.report(2, NOW + 2 * S, {1: (T + 50 * S, False)})  # it gets an event again
    assert p.event_wm == T + 100 * S  # the minimum would be lower: it never goes back
    p.report(2, NOW + 3 * S, {0: (T + 200 * S, False)})
    assert p.event_wm == T + 100 * S  # held by partition 1 now
    p.report(2, NOW + 4 * S, {1: (T + 150 * S, False)})
    assert p.event_wm == T + 150 * S


def test_when_every_partition_is_idle_windows_close_on_the_routers_clock() -> None:
    p = Progress()
    p.report(2, NOW, {0: (T, False), 1: (T + 9 * S, False)})
    p.report(2, NOW + 5 * S, {0: (T, True), 1: (T + 9 * S, True)})
    # Nothing is pending anywhere: close on the clock (the oldest report time); event time is as
    # far as was seen.
    assert p.close_wm == NOW + 5 * S
    assert p.event_wm == T + 9 * S
    # Both routers' clocks count: the older one bounds it.
    p.report(2, NOW + 60 * S, {0: (T, True)})
    assert p.close_wm == NOW + 5 * S
    p.report(2, NOW + 61 * S, {1: (T + 9 * S, True)})
    assert p.close_wm == NOW + 60 * S


def test_an_event_a_little_ahead_of_the_clock_does_not_close_live_windows() -> None:
    p = Progress()
    ahead = NOW + 120 * S  # within the allowed skew, so it was not dead-lettered
    p.report(1, NOW, {0: (ahead, True)})
    assert p.event_wm == NOW
    assert p.close_wm == NOW


def test_a_partition_that_joins_late_holds_the_watermark_until_it_reports() -> None:
    p = Progress()
    p.report(2, NOW, {0: (T + 10 * S, False), 1: (T + 10 * S, False)})
    assert p.event_wm == T + 10 * S
    # The input topic grew to 3 partitions: nobody has reported the new one yet.
    assert not p.report(3, NOW + S, {0: (T + 20 * S, False), 1: (T + 20 * S, False)})
    assert p.event_wm == T + 10 * S
    assert p.report(3, NOW + 2 * S, {2: (None, True)})  # empty so far, hence idle
    assert p.event_wm == T + 20 * S


def test_after_a_rebalance_an_older_report_moves_nothing_back() -> None:
    p = Progress()
    p.report(2, NOW, {0: (T + 30 * S, True), 1: (T + 40 * S, False)})
    # Partition 0 moved to another router, which starts from the last commit: it has routed less
    # so far, and its clock is a little behind the first router's.
    p.report(2, NOW - S, {0: (T + 5 * S, False)})
    assert p.sources[0].wm == T + 30 * S
    assert p.sources[0].idle  # the newer report's word stands
    assert p.event_wm == T + 40 * S  # partition 0 was idle: partition 1 alone counted
    p.report(2, NOW + S, {0: (T + 35 * S, False)})
    assert p.event_wm == T + 40 * S  # active again, behind: held, never moved back
    p.report(2, NOW + 2 * S, {0: (T + 45 * S, False), 1: (T + 50 * S, False)})
    assert p.event_wm == T + 45 * S


def test_progress_is_restored_exactly_after_a_restart() -> None:
    p = Progress()
    p.report(3, NOW, {0: (T, False), 1: (None, True), 2: (T + 7 * S, False)})
    restored = Progress.decode(p.encode())
    assert restored.encode() == p.encode()
    assert (restored.event_wm, restored.close_wm, restored.partitions) == (T, T, 3)
    # Replaying the reports it saw before the crash changes nothing.
    assert not restored.report(3, NOW, {0: (T, False), 1: (None, True), 2: (T + 7 * S, False)})


def test_the_router_reports_what_it_routed_from_each_partition() -> None:
    tracker = SourceTracker(idle_timeout_s=30, drift_ms=60_000)
    tracker.assigned([0, 1], now_s=0)
    tracker.routed(0, T + 60 * S, now_s=1)
    tracker.routed(1, T, now_s=1)
    tracker.routed(1, T - S, now_s=2)  # an older batch never moves it back
    report = tracker.report(4, NOW, now_s=2)
    assert report.partitions == 4
    assert report.stamp_ms == NOW
    assert report.sources == {0: (T + 60 * S, False), 1: (T, False)}


def test_a_partition_is_idle_once_caught_up_and_silent_for_the_timeout() -> None:
    tracker = SourceTracker(idle_timeout_s=30, drift_ms=60_000)
    tracker.assigned([0, 1], now_s=100)
    tracker.routed(0, T, now_s=100)
    tracker.positions({0: True, 1: False})
    assert not tracker.idle(0, now_s=129)
    assert tracker.idle(0, now_s=130)
    assert not tracker.idle(1, now_s=500)  # never read to its end: a backlog holds
    tracker.positions({1: True})
    assert tracker.idle(1, now_s=500)  # empty and caught up
    tracker.routed(0, T + S, now_s=131)
    assert not tracker.idle(0, now_s=131)
    # A reassignment keeps what it knew of partitions it still reads, forgets the others.
    tracker.assigned([0, 2], now_s=200)
    assert set(tracker.sources) == {0, 2}
    assert tracker.sources[0].wm == T + S


def test_catch_up_pauses_a_backlog_that_runs_ahead_but_never_live_traffic() -> None:
    tracker = SourceTracker(idle_timeout_s=30, drift_ms=60_000)
    tracker.assigned([0, 1, 2], now_s=0)
    tracker.routed(0, T, now_s=1)
    tracker.routed(1, T + 120 * S, now_s=1)
    tracker.routed(2, T + 3_600 * S, now_s=1)
    tracker.positions({0: False, 1: False, 2: True})
    pause, resume = tracker.ahead(now_s=1)
    assert pause == {1}  # 2 minutes ahead of the slowest, with records left to read
    assert resume == {0, 2}  # partition 2 is read to its end: live traffic is never held
    tracker.routed(0, T + 80 * S, now_s=2)
    assert tracker.ahead(now_s=2)[0] == {1}  # 40 s ahead: not yet within half the drift
    tracker.routed(0, T + 100 * S, now_s=3)
    assert tracker.ahead(now_s=3) == (set(), {0, 1, 2})


def test_a_partition_read_to_its_end_does_not_hold_a_backlog_back() -> None:
    """Partition 0 is read to its end with events hours behind (a gateway clock running late,
    or a replay that finished): there is nothing of it left to read in order, so partition 1's
    backlog is not paused, however far ahead it is. Its events still hold the watermark."""
    tracker = SourceTracker(idle_timeout_s=30, drift_ms=60_000)
    tracker.assigned([0, 1, 2], now_s=0)
    tracker.routed(0, T, now_s=1)
    tracker.routed(1, T + 3_600 * S, now_s=1)
    tracker.routed(2, T + 7_200 * S, now_s=1)
    tracker.positions({0: True, 1: False, 2: False})
    assert tracker.ahead(now_s=1) == ({2}, {0, 1})  # 2 waits for 1, the slowest backlog
    tracker.positions({1: True})
    assert tracker.ahead(now_s=2) == (set(), {0, 1, 2})

"""The traffic simulator's scenario and framing: determinism, shares, delays, record formats."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from functools import cache

import pytest

from meter.adapters.policy_file import bundled_policy_path, read_policy
from meter.core.events import REASONS, decode_record
from meter.core.policy import Policy
from meter.sim.framing import FORMATS, call_json, frame
from meter.sim.malformed import make_malformed
from meter.sim.scenario import (
    BURST,
    DISORDER,
    FLUSH,
    LATE,
    LATE_MAX_MS,
    LATE_MIN_MS,
    MARKER,
    RETRY,
    RETRY_MAX_MS,
    START_2022,
    START_2023,
    Item,
    ScenarioConfig,
    generate,
)
from meter.sim.traffic import allocate

HOUR = 3_600_000
MARCH = 1_646_092_800_000  # 2022-03-01T00:00:00Z


@cache
def case_policy() -> Policy:
    return read_policy(bundled_policy_path())


@cache
def items_of(config: ScenarioConfig) -> tuple[Item, ...]:
    return tuple(generate(case_policy(), config))


def calls(items: tuple[Item, ...]) -> list[Item]:
    """The distinct calls of the scenario (no retries, no malformed records, no flush)."""
    return [i for i in items if i.event is not None and not i.flags & (RETRY | FLUSH)]


BIG = ScenarioConfig(calls=100_000, malformed=0.01, duplicates=0.03, late=0.005, restricted=0.002)


def within(observed: int, n: int, share: float) -> bool:
    """Whether `observed` of `n` is within 5 standard deviations of a binomial(n, share)."""
    return abs(observed - n * share) <= 5 * math.sqrt(n * share * (1 - share)) + 1


def test_the_same_seed_gives_the_same_records_and_another_seed_others() -> None:
    config = ScenarioConfig(calls=5_000, start_ms=MARCH, end_ms=MARCH + 7 * 24 * HOUR)
    first = list(generate(case_policy(), config))
    again = list(generate(case_policy(), config))
    other = list(generate(case_policy(), ScenarioConfig(**{**config.to_json(), "seed": 8})))
    assert first == again
    for fmt in FORMATS:
        assert list(frame(first, fmt)) == list(frame(again, fmt))
    assert [i.event for i in first[:50]] != [i.event for i in other[:50]]


def test_calls_are_exact_and_times_inside_the_span_except_the_flush() -> None:
    items = items_of(BIG)
    made = calls(items)
    assert len(made) == BIG.calls
    assert all(START_2022 <= i.time_ms < START_2023 for i in made)
    flush = [i for i in items if i.flags & FLUSH]
    assert flush == list(items[-len(flush) :])
    # One flush event per routing key, past the end of the longest window (openai's month).
    assert {i.org for i in flush} == {"microsoft", "openai", "acme-research", None}
    assert all(i.time_ms > START_2023 + 4 * 24 * HOUR for i in flush)


@pytest.mark.parametrize("mean", [33.0, 10.0, 80.0])
def test_records_per_call_average_the_configured_mean(mean: float) -> None:
    made = calls(items_of(ScenarioConfig(calls=100_000, mean_records=mean)))
    assert all(i.event is not None for i in made)
    records = [i.event.records for i in made if i.event is not None]
    assert sum(records) / len(records) == pytest.approx(mean, rel=0.02)
    counts = Counter(records)
    assert counts[0] > 0  # empty pages
    assert counts[100] > 0  # full pages
    assert sum(n for r, n in counts.items() if 0 < r < 100) > len(records) / 10
    assert max(records) == 100


def test_errors_return_no_records() -> None:
    made = calls(items_of(BIG))
    statuses = Counter(i.event.status for i in made if i.event is not None)
    assert within(statuses[429], len(made), 0.02)
    assert within(sum(n for s, n in statuses.items() if s >= 500), len(made), 0.005)
    assert all(i.event.records == 0 for i in made if i.event and i.event.status != 200)


def test_shares_of_malformed_retries_late_and_out_of_order_are_as_configured() -> None:
    items = items_of(BIG)
    made = calls(items)
    n = len(made)
    malformed = sum(1 for i in items if i.bad is not None)
    retried = len({i.event.id for i in items if i.flags & RETRY and i.event})
    assert within(malformed, n, BIG.malformed)
    assert within(retried, n, BIG.duplicates * (1 - BIG.late))
    assert within(sum(1 for i in made if i.flags & LATE), n, BIG.late * 0.99)
    assert within(sum(1 for i in made if i.flags & DISORDER), n, BIG.disorder + 0.005 * 0.005)
    unknown = sum(1 for i in made if i.app_id not in case_policy().apps)
    assert within(unknown, n, BIG.unknown_share)
    government = sum(
        1 for i in made if i.event and (i.event.recipient or "").lower() == "government"
    )
    assert within(government, n, BIG.restricted)


def test_send_order_and_delays_respect_meter_horizons() -> None:
    items = items_of(BIG)
    sends = [i.send_ms for i in items]
    assert sends == sorted(sends)
    sent_at: dict[str, int] = {}
    for i in items:
        delay = i.send_ms - i.time_ms
        assert delay >= 0
        if i.flags & LATE:
            assert LATE_MIN_MS <= delay <= LATE_MAX_MS < 24 * HOUR
        elif i.flags & MARKER:
            assert delay <= 2 * RETRY_MAX_MS + 30_000 if i.flags & RETRY else delay <= 30_000
        elif i.flags & RETRY:
            assert i.event is not None
            assert 0 < i.send_ms - sent_at[i.event.id] <= RETRY_MAX_MS
        elif not i.flags & FLUSH:
            assert delay <= 50_000
        if i.event is not None:
            sent_at[i.event.id] = i.send_ms


def test_traffic_follows_working_hours_a_zipf_split_and_bursts() -> None:
    made = calls(items_of(ScenarioConfig(calls=100_000, burst_share=0.0)))
    by_hour = Counter((i.time_ms // HOUR) % 24 for i in made)
    assert sum(by_hour[h] for h in (14, 15, 16)) > 3 * sum(by_hour[h] for h in (2, 3, 4))
    by_app = sorted(Counter(i.app_id for i in made).values(), reverse=True)
    assert by_app[0] > 3 * by_app[len(by_app) // 2]
    bursty = calls(items_of(BIG))
    assert sum(1 for i in bursty if i.flags & BURST) == round(BIG.calls * BIG.burst_share)


def test_allocate_splits_exactly_and_scale_follows_the_case() -> None:
    assert allocate(10, [1.0, 1.0, 1.0]) == [3, 4, 3]
    assert sum(allocate(1_000_003, [random.random() for _ in range(999)])) == 1_000_003
    assert ScenarioConfig.calls_for_scale(1.0, START_2022, START_2023) == 780_000_000
    assert ScenarioConfig.calls_for_scale(0.001, START_2022, START_2022 + 73 * 24 * HOUR) == 156_000


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ({"end_ms": START_2022}, "the end must be after the start"),
        ({"calls": -1}, "calls must be >= 0"),
        ({"mean_records": 98.0}, "mean records must be between 0 and 97.5"),
        ({"malformed": 1.5}, "malformed must be a share"),
        ({"unknown_share": 1.0}, "unknown_share must be >= 0 and < 1"),
        ({"late": 0.6, "disorder": 0.6}, "late [+] disorder must be <= 1"),
    ],
)
def test_bad_configs_are_refused(field: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScenarioConfig(**field)  # type: ignore[arg-type]


def test_every_malformed_record_is_rejected_once_with_its_reason() -> None:
    rng = random.Random(3)
    seen: set[str] = set()
    for n in range(400):
        bad = make_malformed(rng, "azure", MARCH + n, f"{n:x}")
        decoded = decode_record(bad.value, bad.headers)
        assert decoded.events == []
        assert [r.reason for r in decoded.rejections] == [bad.reason]
        seen.add(bad.reason)
    # Not malformed in themselves: an event too far ahead of its arrival, or past the history
    # horizon, is refused by the router's clock or the counter's state.
    assert seen == REASONS - {"batch_too_large", "future_time", "too_late"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_decodes_to_exactly_the_events_and_rejections_sent(fmt: str) -> None:
    items = items_of(BIG)[:20_000]
    sent = sorted(
        (i.event.app_id, i.event.id, i.time_ms, i.event.records) for i in items if i.event
    )
    reasons = Counter(i.bad.reason for i in items if i.bad is not None)
    got: list[tuple[str, str, int, int]] = []
    rejected: Counter[str] = Counter()
    for msg in frame(items, fmt, batch_size=50):
        decoded = decode_record(msg.value, msg.headers)
        assert len(decoded.events) == msg.events
        assert len(decoded.rejections) == msg.malformed
        got.extend((e.app_id, e.id, e.time_ms, e.records) for e in decoded.events)
        rejected.update(r.reason for r in decoded.rejections)
    assert sorted(got) == sent
    assert rejected == reasons


def test_plain_json_is_the_event_contract() -> None:
    for item in items_of(BIG)[:5_000]:
        if item.event is not None:
            doc = json.loads(call_json(item.event))
            assert doc == item.event.to_json()
            assert decode_record(call_json(item.event).encode()).events[0].time_ms == item.time_ms


def test_batches_hold_one_app_each_and_flush_events_come_last_behind_a_barrier() -> None:
    items = items_of(ScenarioConfig(calls=20_000, start_ms=MARCH, end_ms=MARCH + 2 * 24 * HOUR))
    messages = list(frame(items, "batch", batch_size=20, max_hold_ms=60_000))
    assert max(m.events for m in messages) == 20
    for m in messages:
        if m.events:
            apps = {e["app_id"] for e in json.loads(m.value)}
            assert len(apps) == 1
            assert m.key == apps.pop().encode()
    barriers = [n for n, m in enumerate(messages) if m.barrier]
    flush = sum(1 for i in items if i.flags & FLUSH)
    assert barriers == [len(messages) - flush]
    singles = list(frame(items, "json", key="org"))
    assert [n for n, m in enumerate(singles) if m.barrier] == [len(singles) - flush]
    assert {m.key for m in singles} >= {b"microsoft", b"openai"}
    assert all(m.key is None for m in frame(items[:100], "json", key="none"))


def test_batches_wait_no_longer_than_the_hold_in_send_time() -> None:
    items = items_of(ScenarioConfig(calls=5_000, start_ms=MARCH, end_ms=MARCH + 7 * 24 * HOUR))
    send_of = {i.event.id: i.send_ms for i in items if i.event and not i.flags & RETRY}
    position = 0
    sends = [i.send_ms for i in items]
    for m in frame(items, "batch", batch_size=1000, max_hold_ms=120_000):
        if m.events and not m.barrier:
            oldest = min(send_of[e["id"]] for e in json.loads(m.value))
            while position < len(sends) - 1 and sends[position] < oldest + 120_000:
                position += 1
            assert oldest <= sends[position]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch size must be between 1 and 10000"),
        ({"batch_size": 10_001}, "batch size must be between 1 and 10000"),
        ({"max_hold_ms": 3_600_000}, "max hold must be between 0 and 40 minutes"),
    ],
)
def test_framing_refuses_bad_settings(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        list(frame([], "batch", **kwargs))


def test_framing_refuses_unknown_formats_and_keys() -> None:
    with pytest.raises(ValueError, match="format must be one of json, batch"):
        list(frame([], "avro"))
    with pytest.raises(ValueError, match="key must be one of app, org, none"):
        list(frame([], "json", key="user"))

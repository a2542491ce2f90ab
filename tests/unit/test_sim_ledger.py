"""The simulator's truth against meter's own ledger: a scenario fed, record by record in send order,
through decode_record and one PartitionLedger (one input and one routed partition) must give the
truth's window totals and alerts exactly; and compare() must notice when the ledger does not."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meter.adapters.policy_file import bundled_policy_path, read_policy
from meter.core.events import decode_record
from meter.core.ledger import Applied, LedgerSettings, PartitionLedger
from meter.core.outputs import ALERTS, WINDOWS
from meter.core.policy import Policy
from meter.sim.compare import Comparison, compare
from meter.sim.framing import FORMATS, Message, frame
from meter.sim.scenario import ScenarioConfig, generate
from meter.sim.truth import Truth, TruthBuilder
from tests.harness.sim_cases import policy as hand_policy
from tests.harness.sim_cases import sequence

MARCH = 1_646_092_800_000  # 2022-03-01T00:00:00Z
DAY = 86_400_000

# Dense and messy: many retries, late, out-of-order, malformed, unknown and restricted calls.
MESSY = ScenarioConfig(
    seed=11,
    calls=6_000,
    start_ms=MARCH,
    end_ms=MARCH + 45 * DAY,  # crosses a month and openai's reset on the 5th
    malformed=0.02,
    duplicates=0.08,
    late=0.02,
    disorder=0.2,
    unknown_share=0.03,
    restricted=0.02,
    burst_share=0.5,
)


class DictStore:
    def __init__(self) -> None:
        self.data: dict[str, list[Any]] = {}

    def get(self, key: str) -> list[Any] | None:
        return self.data.get(key)

    def put(self, key: str, value: list[Any]) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def run_meter(
    messages: Iterable[Message],
    policy: Policy,
    settings: LedgerSettings | None = None,
    resend: Callable[[int], bool] = lambda i: False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What one worker with one input and one routed partition would publish: window records and
    alerts. Like the router, it reports progress after each record (the newest event time, each
    event counted at no later than it was sent), and at the end that the input is idle. Where
    `resend(i)`, the i-th record's events are routed a second time (a producer's retry, or the
    router re-sending a batch after a crash), at a new offset."""
    ledger = PartitionLedger(0, policy, settings or LedgerSettings(), DictStore())
    windows: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    offsets = iter(range(1 << 30))
    wm: int | None = None
    clock = 0

    def publish(applied: Applied) -> None:
        for pending in applied.outbox:
            kind = pending.record.kind
            if kind in (ALERTS, WINDOWS):  # not the dead letters
                (alerts if kind == ALERTS else windows).append(pending.record.value)
        ledger.acknowledge(applied.outbox)

    for i, msg in enumerate(messages):
        decoded = decode_record(msg.value, msg.headers)
        publish(ledger.apply(next(offsets), decoded.events, 0, msg.send_ms))
        if resend(i):
            publish(ledger.apply(next(offsets), decoded.events, 0, msg.send_ms))
        for ev in decoded.events:
            wm = max(wm or ev.time_ms, min(ev.time_ms, msg.send_ms))
        clock = max(clock, msg.send_ms)
        publish(ledger.report(next(offsets), 1, clock, {0: (wm, False)}, 0))
    publish(ledger.report(next(offsets), 1, clock + 10**12, {0: (wm, True)}, 0))
    return windows, alerts


def scenario(policy: Policy, config: ScenarioConfig, fmt: str) -> tuple[Truth, Comparison]:
    items = list(generate(policy, config))
    truth = TruthBuilder(policy).add_all(items).build(config.to_json())
    windows, alerts = run_meter(frame(items, fmt, batch_size=25), policy)
    return truth, compare(truth, windows, alerts)


@pytest.mark.parametrize("fmt", FORMATS)
def test_meter_reports_exactly_the_truth_of_a_messy_scenario(fmt: str) -> None:
    policy = read_policy(bundled_policy_path())
    truth, result = scenario(policy, MESSY, fmt)
    assert result.ok, result.summary()
    kinds = truth.alert_counts()
    assert kinds["cap"] > 3
    assert kinds["unknown_app"] > 10
    assert kinds["restricted_use"] > 10
    assert truth.sent["late"] > 50
    assert truth.sent["duplicates"] > 300
    # Once the input is idle, every window closes.
    assert result.windows_expected == len(truth.windows)
    assert result.windows_matched == result.windows_expected


def test_meter_reports_exactly_the_truth_of_the_hand_built_sequence() -> None:
    policy = hand_policy()
    items = sequence()
    truth = TruthBuilder(policy).add_all(items).build({})
    windows, alerts = run_meter(frame(items, "json"), policy)
    result = compare(truth, windows, alerts)
    assert result.ok, result.summary()
    assert result.windows_matched == 14
    assert len(alerts) == 5


def test_compare_catches_a_meter_that_forgets_ids_too_soon() -> None:
    # With a 1-second dedup horizon, some retries are counted twice: totals go wrong.
    policy = read_policy(bundled_policy_path())
    items = list(generate(policy, MESSY))
    truth = TruthBuilder(policy).add_all(items).build({})
    forgetful = LedgerSettings(dedup_horizon_ms=1_000)
    windows, alerts = run_meter(frame(items, "batch"), policy, forgetful)
    result = compare(truth, windows, alerts)
    assert not result.ok
    assert len(result.wrong_windows) > 10
    assert all(w.calls > w.expected.calls for w in result.wrong_windows)


def test_a_short_late_horizon_keeps_totals_exact_but_a_short_history_does_not() -> None:
    """Past the late horizon a window keeps compact totals, so late events still give whole
    totals (base "expired"); past the history horizon they are dead-lettered, and compare()
    sees the windows short."""
    policy = read_policy(bundled_policy_path())
    items = list(generate(policy, MESSY))
    truth = TruthBuilder(policy).add_all(items).build({})
    compacting = LedgerSettings(late_horizon_ms=60_000)
    windows, alerts = run_meter(frame(items, "json"), policy, compacting)
    assert compare(truth, windows, alerts).ok
    assert any(w["base"] == "expired" for w in windows)
    forgetful = LedgerSettings(late_horizon_ms=60_000, history_horizon_ms=60_000)
    windows, alerts = run_meter(frame(items, "json"), policy, forgetful)
    result = compare(truth, windows, alerts)
    assert not result.ok
    assert result.wrong_windows
    assert all(w.calls < w.expected.calls for w in result.wrong_windows)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    fmt=st.sampled_from(FORMATS),
    duplicates=st.floats(0, 0.3),
    late=st.floats(0, 0.1),
    disorder=st.floats(0, 0.6),
    unknown=st.floats(0, 0.1),
    batch_size=st.integers(1, 60),
    resent=st.frozensets(st.integers(0, 400), max_size=40),
)
def test_the_ledger_agrees_with_the_plain_reference_model_whatever_the_traffic(
    seed: int,
    fmt: str,
    duplicates: float,
    late: float,
    disorder: float,
    unknown: float,
    batch_size: int,
    resent: frozenset[int],
) -> None:
    """Property: for any mix of order, retries, late calls, unknown apps, batching and records
    routed twice, the ledger's window totals and alerts equal the reference model's (the
    simulator's truth: a plain count of distinct calls per subject and window)."""
    policy = read_policy(bundled_policy_path())
    config = ScenarioConfig(
        seed=seed,
        calls=300,
        start_ms=MARCH,
        end_ms=MARCH + 3 * DAY,
        malformed=0.02,
        duplicates=duplicates,
        late=late,
        disorder=disorder,
        unknown_share=unknown,
        restricted=0.02,
    )
    items = list(generate(policy, config))
    truth = TruthBuilder(policy).add_all(items).build({})
    messages = frame(items, fmt, batch_size=batch_size)
    windows, alerts = run_meter(messages, policy, resend=resent.__contains__)
    result = compare(truth, windows, alerts)
    assert result.ok, result.summary()
    assert result.windows_matched == len(truth.windows)

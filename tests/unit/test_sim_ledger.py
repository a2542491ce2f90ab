"""The simulator's truth against meter's own ledger: a scenario fed, record by record in send order,
through decode_record and one PartitionLedger (one input and one routed partition) must give the
truth's window totals and alerts exactly; and compare() must notice when the ledger does not."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from meter.adapters.policy_file import bundled_policy_path, read_policy
from meter.core.events import decode_record
from meter.core.ledger import LedgerSettings, PartitionLedger
from meter.core.outputs import ALERTS
from meter.core.policy import Policy
from meter.sim.compare import Comparison, compare
from meter.sim.framing import FORMATS, Message, frame
from meter.sim.scenario import ScenarioConfig, generate
from meter.sim.truth import Truth, TruthBuilder
from tests.unit.test_sim_truth import policy as hand_policy
from tests.unit.test_sim_truth import sequence

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
        self.data: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def run_meter(
    messages: Iterable[Message], policy: Policy, settings: LedgerSettings | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What one worker with one partition would publish: window records and alerts."""
    ledger = PartitionLedger(0, policy, settings or LedgerSettings(), DictStore())
    windows: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    for offset, msg in enumerate(messages):
        decoded = decode_record(msg.value, msg.headers)
        applied = ledger.apply(offset, decoded.events, 0, msg.send_ms)
        for pending in applied.outbox:
            (alerts if pending.record.kind == ALERTS else windows).append(pending.record.value)
        ledger.acknowledge(applied.outbox)
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
    # The flush events closed every window but their own.
    flush_rows = sum(1 for w in truth.windows if w.start_ms > MESSY.end_ms)
    assert result.windows_expected == len(truth.windows) - flush_rows
    assert result.windows_matched == result.windows_expected


def test_meter_reports_exactly_the_truth_of_the_hand_built_sequence() -> None:
    policy = hand_policy()
    items = sequence()
    truth = TruthBuilder(policy).add_all(items).build({})
    windows, alerts = run_meter(frame(items, "json"), policy)
    result = compare(truth, windows, alerts)
    assert result.ok, result.summary()
    assert result.windows_matched == 3
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


def test_compare_catches_a_meter_whose_late_horizon_is_too_short() -> None:
    # Windows expire before their late events arrive: those restart from zero ("expired").
    policy = read_policy(bundled_policy_path())
    items = list(generate(policy, MESSY))
    truth = TruthBuilder(policy).add_all(items).build({})
    hasty = LedgerSettings(late_horizon_ms=60_000)
    windows, alerts = run_meter(frame(items, "json"), policy, hasty)
    result = compare(truth, windows, alerts)
    assert not result.ok
    assert result.wrong_windows

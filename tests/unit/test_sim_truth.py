"""The simulator's ground truth of a hand-built sequence; compare() on each kind of mismatch."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from meter.core.outputs import marker_alert, stable_id
from meter.core.windows import format_ms
from meter.sim import SimulationError
from meter.sim.compare import compare
from meter.sim.truth import (
    ExpectedAlert,
    Truth,
    TruthBuilder,
    WindowTotal,
    load_truth,
    write_truth,
)
from tests.harness.sim_cases import HOUR, M15, MIN, T0, policy, sent, sequence


def build() -> Truth:
    return TruthBuilder(policy()).add_all(sequence()).build({"name": "hand-built"})


def test_window_totals_are_exact() -> None:
    rows = {
        (w.subject_type, w.subject, w.window, w.start_ms): (w.calls, w.records)
        for w in build().windows
    }
    assert rows == {
        ("app", "a1", "15m", T0): (4, 70),
        ("app", "a1", "15m", T0 + M15): (1, 45),
        ("app", "a1", "1h", T0): (5, 115),
        ("app", "a2", "15m", T0): (2, 51),
        ("app", "a2", "1h", T0): (2, 51),
        ("app", "ghost", "15m", T0 + M15): (1, 5),
        ("app", "ghost", "1h", T0): (1, 5),
        ("app", "g1", "15m", T0 + 2 * M15): (1, 0),
        ("app", "g1", "1h", T0): (1, 0),
        ("org", "acme", "15m", T0): (6, 121),
        ("org", "acme", "15m", T0 + M15): (2, 50),
        ("org", "acme", "1h", T0): (8, 171),
        ("org", "gov-ok", "15m", T0 + 2 * M15): (1, 0),
        ("org", "gov-ok", "1h", T0): (1, 0),
    }


def test_sent_counts() -> None:
    truth = build()
    assert truth.sent == {
        "events": 10,
        "calls": 9,
        "duplicates": 1,
        "records": 171,
        "malformed": 1,
        "late": 0,
        "out_of_order": 0,
        "unknown_app_events": 1,
        "restricted_events": 1,
        "flush": 0,
        "malformed_reasons": {"not_json": 1},
    }


def test_alerts_and_their_ids_are_exactly_meters() -> None:
    def cap(stype: str, subject: str, key: str, ratio: float, severity: str) -> ExpectedAlert:
        alert_id = stable_id("cap", stype, subject, key, T0, ratio)
        return ExpectedAlert(alert_id, "cap", severity, stype, subject, key, ratio, T0)

    unknown = marker_alert(
        kind="unknown_app", severity="warning", subject_type="app", subject="ghost",
        org_id="acme", day_start_ms=T0, day_end_ms=T0 + 24 * HOUR, crossed_at_ms=0,
        event_id="e7", late=False, now_ms=0, details={},
    )  # fmt: skip
    restricted = marker_alert(
        kind="restricted_use", severity="critical", subject_type="org", subject="acme",
        org_id="acme", day_start_ms=T0, day_end_ms=T0 + 24 * HOUR, crossed_at_ms=0,
        event_id="e4", late=False, now_ms=0,
        details={"app_id": "a1", "recipient": "government", "rule": "notice"},
    )  # fmt: skip
    assert build().alerts == sorted(
        [
            cap("app", "a1", "tier:std:calls-15m", 0.8, "warning"),  # 4 of 5 calls
            cap("org", "acme", "org:acme:records-1h", 0.5, "warning"),  # 120 records in 2xx
            cap("org", "acme", "org:acme:records-1h", 1.0, "critical"),
            ExpectedAlert(unknown.id, "unknown_app", "warning", "app", "ghost", None, None, T0),
            ExpectedAlert(
                restricted.id, "restricted_use", "critical", "org", "acme", None, None, T0
            ),
        ]
    )


def test_a_repeat_too_long_after_its_call_cannot_be_judged() -> None:
    builder = TruthBuilder(policy())
    builder.add(sent("e1", T0, "a1"))
    old = sent("e0", T0, "a1")
    with pytest.raises(SimulationError, match="more than a day after its time"):
        builder.add(old._replace(send_ms=T0 + 30 * HOUR))


def test_truth_files_round_trip(tmp_path: Path) -> None:
    truth = build()
    path = tmp_path / "sim" / "truth.json"
    write_truth(truth, path)
    assert load_truth(path) == truth
    with pytest.raises(SimulationError, match="cannot read truth file"):
        load_truth(tmp_path / "missing.json")


def window_record(w: WindowTotal, revision: int = 0, **changes: Any) -> dict[str, Any]:
    record = {
        "subject_type": w.subject_type,
        "subject": w.subject,
        "window": {"size": w.window, "start": format_ms(w.start_ms), "end": format_ms(w.end_ms)},
        "revision": revision,
        "calls": w.calls,
        "records": w.records,
    }
    record.update(changes)
    return record


def alert_record(a: ExpectedAlert) -> dict[str, Any]:
    return {
        "id": a.id,
        "kind": a.kind,
        "severity": a.severity,
        "subject_type": a.subject_type,
        "subject": a.subject,
        "cap": a.cap,
        "threshold": a.threshold,
        "window": {"size": "x", "start": format_ms(a.window_start), "end": "x"},
    }


def perfect(truth: Truth) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return [window_record(w) for w in truth.windows], [alert_record(a) for a in truth.alerts]


def test_meter_outputs_equal_to_the_truth_compare_ok() -> None:
    truth = build()
    windows, alerts = perfect(truth)
    assert compare(truth, windows, alerts).windows_expected == 14  # all, once everything is idle
    result = compare(truth, windows, alerts, closed_until_ms=T0 + 20 * MIN)
    assert result.ok, result.summary()
    # Only windows that end a grace before the time given must be there.
    assert result.windows_expected == 3
    assert result.windows_seen == len(truth.windows) == 14
    assert result.summary().startswith("OK: meter matches the truth")


def test_open_windows_need_not_be_published_but_closed_ones_must() -> None:
    truth = build()
    windows, alerts = perfect(truth)
    open_only = [w for w in windows if w["window"]["size"] == "1h"]
    result = compare(truth, open_only, alerts, closed_until_ms=T0 + 20 * MIN)
    assert [(w.subject, w.window, w.start_ms) for w in result.missing_windows] == [
        ("a1", "15m", T0), ("a2", "15m", T0), ("acme", "15m", T0),
    ]  # fmt: skip
    assert not result.ok
    assert "missing windows: 3" in result.summary()


def test_the_highest_revision_counts_and_wrong_totals_are_reported() -> None:
    truth = build()
    windows, alerts = perfect(truth)
    stale = window_record(truth.windows[0], revision=0, calls=1)
    final = window_record(truth.windows[0], revision=1)
    assert compare(truth, [stale, final, *windows[1:]], alerts).ok
    result = compare(
        truth, [final, window_record(truth.windows[0], 2, records=7), *windows[1:]], alerts
    )
    assert [(w.expected, w.records, w.revision) for w in result.wrong_windows] == [
        (truth.windows[0], 7, 2)
    ]
    assert "wrong window totals: 1" in result.summary()


def test_unexpected_windows_are_reported() -> None:
    truth = build()
    windows, alerts = perfect(truth)
    phantom = window_record(WindowTotal("app", "a9", "15m", T0, T0 + M15, 1, 1))
    result = compare(truth, [*windows, phantom], alerts)
    assert [r["subject"] for r in result.unexpected_windows] == ["a9"]
    assert not result.ok


def test_missing_unexpected_duplicate_and_wrong_alerts_are_reported() -> None:
    truth = build()
    windows, alerts = perfect(truth)
    extra = copy.deepcopy(alerts[0]) | {"id": "f" * 32}
    wrong = copy.deepcopy(alerts[2]) | {"severity": "page"}
    result = compare(truth, windows, [alerts[0], alerts[0], wrong, extra, *alerts[3:]])
    assert [a.id for a in result.missing_alerts] == [alerts[1]["id"]]
    assert [a["id"] for a in result.unexpected_alerts] == ["f" * 32]
    assert result.duplicate_alerts == {alerts[0]["id"]: 2}
    assert [w.got["severity"] for w in result.wrong_alerts] == ["page"]
    summary = result.summary(limit=1)
    assert summary.startswith("MISMATCH")
    for line in ("missing alerts: 1", "unexpected alerts: 1", "duplicate alert ids: 1",
                 "alerts with wrong facts: 1"):  # fmt: skip
        assert line in summary

"""The demo's API check: months of 2022 from the truth's daily windows, and a mismatch (a month
or the alert count) is reported, not passed."""

from __future__ import annotations

from typing import Any

import pytest

from meter.demo import api_check
from meter.sim.truth import Truth, WindowTotal

JAN = 1_640_995_200_000  # 2022-01-01
DAY = 86_400_000


def truth() -> Truth:
    windows = [
        WindowTotal("app", "a1", "1d", JAN, JAN + DAY, 3, 30),
        WindowTotal("app", "a1", "1d", JAN + 40 * DAY, JAN + 41 * DAY, 2, 5),  # February
        WindowTotal("app", "a1", "1h", JAN, JAN + 3_600_000, 3, 30),  # not a day: left out
        WindowTotal("org", "o", "1d", JAN + 40 * DAY, JAN + 41 * DAY, 2, 5),
        WindowTotal("app", "a1", "1d", JAN + 365 * DAY, JAN + 366 * DAY, 1, 0),  # 2023
    ]
    return Truth({}, {}, windows, [])


def test_expected_months_sum_the_daily_windows_of_2022() -> None:
    assert api_check.expected_months(truth()) == {
        ("app", "a1", "2022-01"): (3, 30),
        ("app", "a1", "2022-02"): (2, 5),
        ("org", "o", "2022-02"): (2, 5),
    }


def fake_api(monkeypatch: pytest.MonkeyPatch, months: dict[Any, Any], alerts: int) -> None:
    monkeypatch.setattr(api_check, "api_months", lambda base: months)
    monkeypatch.setattr(api_check, "_pages", lambda base, path, q: [{}] * alerts)


def test_the_check_passes_only_when_months_and_alerts_agree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    want = api_check.expected_months(truth())
    fake_api(monkeypatch, dict(want), 4)
    ok = api_check.check_api("http://x", truth(), alerts=4, timeout_s=0)
    assert (ok.ok, ok.rows, ok.subjects, ok.alerts) == (True, 3, 2, 4)
    wrong = dict(want)
    wrong[("app", "a1", "2022-02")] = (2, 6)
    fake_api(monkeypatch, wrong, 4)
    bad = api_check.check_api("http://x", truth(), alerts=4, timeout_s=0)
    assert not bad.ok
    assert "('app', 'a1', '2022-02'): API (2, 6), truth (2, 5)" in bad.detail
    fake_api(monkeypatch, dict(want), 3)
    short = api_check.check_api("http://x", truth(), alerts=4, timeout_s=0)
    assert not short.ok
    assert short.detail == "3 alerts stored, 4 published"

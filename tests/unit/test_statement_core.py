"""The pure core of usage statements: canonical bytes and ids, the first difference between two
statements, contract months clipped to a period, final versus provisional, and the policy
digest."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from meter.core.durations import DAY_MS
from meter.core.policy import load_policy
from meter.core.statement import (
    AlertFact,
    CapUse,
    ContractMonth,
    Digest,
    Rules,
    StatementError,
    StatementFacts,
    Volume,
    WindowFact,
    build_statement,
    canonical_bytes,
    content_digest,
    contract_month,
    first_difference,
    month_slices,
    parse_bound,
    parse_statement,
    policy_digest,
    statement_id,
    utilization,
)
from meter.core.windows import CalendarMonthWindow, format_ms

JAN, FEB, MAR = 1_640_995_200_000, 1_643_673_600_000, 1_646_092_800_000  # 2022-01/02/03-01Z
POLICY: dict[str, Any] = {
    "orgs": {
        "acme": {
            "name": "Acme",
            "caps": [
                {"id": "calls-1h", "metric": "calls", "window": "1h", "limit": 10},
                {
                    "id": "records-month",
                    "metric": "records",
                    "limit": 1000,
                    "window": {"month": {"reset_day": 5, "timezone": "America/New_York"}},
                },
            ],
        },
        "plain": {"name": "Plain"},
    },
    "apps": {"a1": {"org": "acme", "name": "App One"}, "a2": {"org": "acme"}},
    "restricted_uses": [{"recipient": "government", "requires": "notice"}],
}


def facts(**over: Any) -> StatementFacts:
    policy = load_policy(POLICY)
    contract = ContractMonth(CalendarMonthWindow(), "org:acme:records-month")
    months = month_slices(contract.window, JAN, MAR)
    base = StatementFacts(
        org_id="acme",
        org_name="Acme",
        government_notice_ms=None,
        from_ms=JAN,
        to_ms=MAR,
        tz="UTC",
        contract=contract,
        rules=Rules(),
        as_of_ms=1_800_000_000_000,
        event_time_seen_ms=MAR + DAY_MS,
        policy_sha256="p" * 64,
        generator=("meter", "1"),
        known_apps={"a1": "App One", "a2": "a2"},
        restricted=policy.restricted_uses,
        totals=Volume(30, 300),
        by_app={"a1": Volume(20, 100), "a2": Volume(10, 200)},
        months=months,
        month_totals={"2022-01": Volume(12, 120), "2022-02": Volume(18, 180)},
        app_months={("a1", "2022-01"): Volume(12, 120), ("a1", "2022-02"): Volume(8, 80)},
        month_caps={"2022-01": [CapUse("org:acme:records-month", "records", 1000, 333)]},
        endpoints=[("/search", Volume(25, 250)), ("(other)", Volume(5, 50))],
        recipient_months={("government", "2022-02", "a2"): Volume(2, 7)},
        recipient_days={("2022-02-03", "government", "a2"): Volume(2, 7)},
        alerts=[
            AlertFact(
                "x1",
                "cap",
                "warning",
                "app",
                "a1",
                "tier:t:calls-1h",
                "calls",
                0.8,
                "1h",
                JAN,
                JAN + 3_600_000,
                10,
                8,
                JAN + 60_000,
                False,
                None,
                None,
                None,
            )
        ],
        windows=[WindowFact(JAN + DAY_MS * (i + 1), i % 3, "complete", i % 2) for i in range(59)],
        source_window="1d",
        window_inputs=Digest(118, "w" * 64),
        window_sizes=("1d", "month"),
        alert_inputs=Digest(1, "a" * 64),
    )
    for key, value in over.items():
        setattr(base, key, value)
    return base


def floats_in(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [f for v in node.values() for f in floats_in(v)]
    if isinstance(node, list):
        return [f for v in node for f in floats_in(v)]
    return [node] if isinstance(node, float) else []


def test_a_statement_is_canonical_json_of_integers_and_strings_whose_sha256_is_its_id() -> None:
    doc = build_statement(facts())
    body = canonical_bytes(doc)
    assert statement_id(body) == hashlib.sha256(body).hexdigest()
    assert body == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert floats_in(doc) == []
    assert parse_statement(body) == doc
    assert doc["totals"] == {"calls": 30, "records": 300}
    assert doc["by_app"][0] == {"app": "a2", "calls": 10, "records": 200}  # most records first
    assert [m["month"] for m in doc["by_month"]] == ["2022-01", "2022-02"]
    assert doc["by_month"][0]["caps"] == [
        {
            "cap": "org:acme:records-month",
            "metric": "records",
            "limit": 1000,
            "used": 333,
            "utilization": "0.3330",
        }
    ]
    # every app in every month, zeros included
    assert len(doc["by_app_month"]) == 4
    assert doc["caps_crossed"][0]["threshold"] == "0.8"
    assert doc["restricted_use"]["days"] == [
        {
            "date": "2022-02-03",
            "recipient": "government",
            "calls": 2,
            "records": 7,
            "apps": [{"app": "a2", "calls": 2, "records": 7}],
        }
    ]
    assert doc["data_quality"]["late_events"] == 29
    assert doc["data_quality"]["amended_windows"] == 39


def test_an_edited_statement_is_refused_even_when_only_whitespace_changed() -> None:
    body = canonical_bytes(build_statement(facts()))
    with pytest.raises(StatementError, match="canonical form"):
        parse_statement(body.replace(b'{"calls"', b'{ "calls"', 1))
    with pytest.raises(StatementError, match="not a usage statement"):
        parse_statement(b'{"kind":"other"}')
    with pytest.raises(StatementError, match="not JSON"):
        parse_statement(b"\xff")


def test_the_first_difference_names_the_section_and_the_value() -> None:
    a = build_statement(facts())
    b = json.loads(json.dumps(a))
    assert first_difference(a, b) is None
    b["by_month"][1]["records"] += 1
    b["caps_crossed"][0]["used"] = 9  # later in section order: not the first
    diff = first_difference(a, b)
    assert diff is not None
    assert diff.section == "by_month"
    assert diff.describe("file", "store") == "by_month[2022-02].records: file 180, store 181"
    b = json.loads(json.dumps(a))
    b["inputs"]["windows"]["count"] = 119
    found = first_difference(a, b)
    assert found is not None
    assert found.section == "inputs"
    del b["inputs"]
    found = first_difference(a, b)
    assert found is not None
    assert found.describe().endswith("right (absent)")


def test_a_statement_is_final_once_event_time_has_passed_every_horizon() -> None:
    rules = Rules(grace_ms=60_000, late_horizon_ms=DAY_MS, history_horizon_ms=35 * DAY_MS)
    due = MAR + 60_000 + 36 * DAY_MS  # the period's end (March 1st) plus all three
    early = build_statement(facts(rules=rules, event_time_seen_ms=due - 1))
    assert (early["status"], early["final_after"]) == ("provisional", format_ms(due))
    # windows ending within the horizons of the event time seen can still change
    assert early["data_quality"]["provisional_windows"] == 1
    done = build_statement(facts(rules=rules, event_time_seen_ms=due))
    assert done["status"] == "final"
    assert done["data_quality"]["provisional_windows"] == 0
    assert build_statement(facts(event_time_seen_ms=None))["status"] == "provisional"
    # a monthly cap's month reaching past the period keeps it provisional until it can't change
    nyc = ContractMonth(CalendarMonthWindow(5, "America/New_York"), "org:acme:records-month")
    slices = month_slices(nyc.window, JAN, MAR)
    late_month = build_statement(
        facts(rules=rules, contract=nyc, months=slices, event_time_seen_ms=due)
    )
    assert late_month["status"] == "provisional"
    assert late_month["final_after"] == format_ms(slices[-1].month_end_ms + due - MAR)


def test_the_content_digest_ignores_the_cut_but_not_the_figures() -> None:
    a = build_statement(facts())
    later = build_statement(facts(as_of_ms=1_900_000_000_000, event_time_seen_ms=MAR * 2))
    assert canonical_bytes(a) != canonical_bytes(later)
    assert content_digest(a) == content_digest(later)
    changed = build_statement(facts(totals=Volume(31, 300)))
    assert content_digest(changed) != content_digest(a)


def test_contract_months_follow_the_policys_reset_day_and_zone_clipped_to_the_period() -> None:
    policy = load_policy(POLICY)
    contract = contract_month(policy, "acme", "UTC")
    assert (contract.cap, contract.window.name) == (
        "org:acme:records-month",
        "month:reset=5:tz=America/New_York",
    )
    slices = month_slices(contract.window, JAN, MAR)
    assert [(s.label, format_ms(s.start_ms), format_ms(s.end_ms), s.partial) for s in slices] == [
        ("2021-12", "2022-01-01T00:00:00Z", "2022-01-05T05:00:00Z", True),
        ("2022-01", "2022-01-05T05:00:00Z", "2022-02-05T05:00:00Z", False),
        ("2022-02", "2022-02-05T05:00:00Z", "2022-03-01T00:00:00Z", True),
    ]
    # the months of a summer period follow daylight-saving time (UTC-4)
    june = parse_bound("2022-06-01", "UTC", "from")
    assert format_ms(month_slices(contract.window, june, june + DAY_MS * 30)[1].start_ms) == (
        "2022-06-05T04:00:00Z"
    )
    # an organisation without a monthly cap: calendar months of the report's zone
    plain = contract_month(policy, "plain", "Europe/Paris")
    assert (plain.cap, plain.window.name) == (None, "month:reset=1:tz=Europe/Paris")


def test_bounds_are_local_midnights_or_instants_with_an_offset() -> None:
    assert parse_bound("2022-03-01", "Europe/Paris", "from") == MAR - 3_600_000
    assert parse_bound("2022-03-01T00:00:00Z", "Europe/Paris", "from") == MAR
    for text in ("yesterday", "2022-03-01T00:00:00"):
        with pytest.raises(StatementError) as bad:
            parse_bound(text, "UTC", "to")
        assert bad.value.param == "to"
    with pytest.raises(StatementError) as zone:
        parse_bound("2022-03-01", "Mars/Olympus", "from")
    assert zone.value.param == "tz"


def test_utilization_is_an_exact_decimal_string() -> None:
    assert utilization(1, 3) == "0.3333"
    assert utilization(2, 3) == "0.6667"
    assert utilization(450, 450) == "1.0000"
    assert utilization(10**15, 7) == "142857142857142.8571"


def test_the_policy_digest_depends_on_the_policy_not_on_how_it_is_written() -> None:
    reordered = json.loads(json.dumps(POLICY, sort_keys=True))
    assert policy_digest(load_policy(reordered)) == policy_digest(load_policy(POLICY))
    changed = json.loads(json.dumps(POLICY))
    changed["orgs"]["acme"]["caps"][0]["limit"] = 11
    assert policy_digest(load_policy(changed)) != policy_digest(load_policy(POLICY))

"""Current usage and enforcement from the quota feed, and the rate-limit headers (pure core)."""

from __future__ import annotations

from typing import Any

import pytest

from meter.core.enforcement import FeedState, check, subject_caps, worst_state
from meter.core.policy import Policy, load_policy
from meter.core.ratelimit import headers
from meter.core.windows import format_ms

T = 1_646_130_600_000  # 2022-03-01T10:30:00Z
MIN = 60_000

POLICY: dict[str, Any] = {
    "tiers": {
        "std": {
            "caps": [
                {"id": "calls-15m", "metric": "calls", "window": "15m", "limit": 10},
                {"id": "search-1h", "metric": "calls", "window": "1h", "limit": 5,
                 "endpoints": ["/search/*"]},
                {"id": "calls-1d", "metric": "calls", "window": "1d", "limit": 1000,
                 "enforcement": "soft"},
            ]
        }
    },
    "orgs": {
        "acme": {"caps": [
            {"id": "records-month", "metric": "records", "window": "month", "limit": 100},
        ]},
        "globex": {},
    },
    "apps": {
        "a1": {"org": "acme", "tier": "std"},
        "a2": {"org": "acme", "tier": "std"},
        "g1": {"org": "globex", "tier": "std"},
    },
}  # fmt: skip


@pytest.fixture
def policy() -> Policy:
    return load_policy(POLICY)


def record(
    stype: str, subject: str, cap: str, start: int, end: int, used: int, seq: int = 1
) -> dict[str, Any]:
    return {
        "subject": {"type": stype, "id": subject, "org_id": "acme"},
        "cap": cap,
        "window": {"size": "x", "start": format_ms(start), "end": format_ms(end)},
        "used": used,
        "seq": seq,
        "watermark": format_ms(T - MIN),
        "updated_at": format_ms(T - 1000),
    }


def feed_with(*records: dict[str, Any]) -> FeedState:
    feed = FeedState()
    for r in records:
        s = r["subject"]
        feed.apply(f"{s['type']}:{s['id']}|{r['cap']}", r)
    return feed


Q = 15 * MIN
H = 60 * MIN
START_15M = T - T % Q  # 10:30
START_1H = T - T % H  # 10:00


def test_caps_without_records_have_used_nothing_in_the_window_holding_now(policy: Policy) -> None:
    caps = subject_caps(policy, FeedState(), "app", "a1", T + 5)
    assert [(c.cap.id, c.used, c.start_ms, c.seq) for c in caps] == [
        ("calls-15m", 0, START_15M, None),
        ("search-1h", 0, START_1H, None),
        ("calls-1d", 0, T - T % (24 * H), None),
    ]
    body = caps[0].to_json()
    assert body["window"] == {
        "size": "15m", "start": "2022-03-01T10:30:00Z", "end": "2022-03-01T10:45:00Z",
    }  # fmt: skip
    assert (body["remaining"], body["state"], body["reset_at"]) == (
        10,
        "ok",
        "2022-03-01T10:45:00Z",
    )


def test_a_record_counts_until_its_window_ends_then_the_cap_has_reset(policy: Policy) -> None:
    feed = feed_with(record("app", "a1", "tier:std:calls-15m", START_15M, START_15M + Q, 9))
    (now,) = [c for c in subject_caps(policy, feed, "app", "a1", T) if c.cap.id == "calls-15m"]
    assert (now.used, now.remaining, now.state, now.seq) == (9, 1, "warning", 1)
    later = subject_caps(policy, feed, "app", "a1", START_15M + Q)[0]
    assert (later.used, later.start_ms, later.state, later.seq) == (0, START_15M + Q, "ok", None)


def test_stale_records_are_ignored_and_tombstones_remove(policy: Policy) -> None:
    key = "app:a1|tier:std:calls-15m"
    feed = FeedState()
    feed.apply(key, record("app", "a1", "tier:std:calls-15m", START_15M, START_15M + Q, 7, seq=20))
    feed.apply(key, record("app", "a1", "tier:std:calls-15m", START_15M, START_15M + Q, 5, seq=9))
    assert subject_caps(policy, feed, "app", "a1", T)[0].used == 7
    assert len(feed) == 1
    feed.apply(key, None)
    assert len(feed) == 0
    assert subject_caps(policy, feed, "app", "a1", T)[0].used == 0


def test_a_hard_cap_exceeded_denies_until_it_resets(policy: Policy) -> None:
    feed = feed_with(record("app", "a1", "tier:std:calls-15m", START_15M, START_15M + Q, 10))
    denied = check(policy, feed, "a1", "/users", T + 1)
    assert not denied.allowed
    assert [c.cap.key for c in denied.violated] == ["tier:std:calls-15m"]
    assert denied.retry_after_s == 15 * 60  # 14:59.999 rounded up
    # the other app of the organisation has its own app caps
    assert check(policy, feed, "a2", "/users", T + 1).allowed
    assert check(policy, feed, "a1", "/users", START_15M + Q).allowed  # reset


def test_only_the_caps_a_call_draws_from_decide(policy: Policy) -> None:
    feed = feed_with(record("app", "a1", "tier:std:search-1h", START_1H, START_1H + H, 5))
    assert not check(policy, feed, "a1", "/search/recent", T).allowed
    users = check(policy, feed, "a1", "/users", T)
    assert users.allowed
    assert "tier:std:search-1h" not in [c.cap.key for c in users.caps]


def test_an_org_cap_exceeded_denies_every_app_of_the_org_even_one_never_seen(
    policy: Policy,
) -> None:
    month = 1_646_092_800_000  # 2022-03-01
    feed = feed_with(record("org", "acme", "org:acme:records-month", month, 1_648_771_200_000, 140))
    for app in ("a1", "a2"):
        decision = check(policy, feed, app, None, T)
        assert not decision.allowed
        assert [c.cap.key for c in decision.violated] == ["org:acme:records-month"]
    assert decision.retry_after_s == (1_648_771_200_000 - T) // 1000
    assert check(policy, feed, "g1", None, T).allowed


def test_a_soft_cap_is_shown_but_never_denies(policy: Policy) -> None:
    day = T - T % (24 * H)
    feed = feed_with(record("app", "a1", "tier:std:calls-1d", day, day + 24 * H, 5000))
    decision = check(policy, feed, "a1", None, T)
    assert decision.allowed
    soft = [c for c in decision.caps if c.cap.id == "calls-1d"]
    assert soft[0].state == "exceeded"
    assert worst_state(decision.caps) == "exceeded"


def test_unknown_apps_have_no_caps(policy: Policy) -> None:
    decision = check(policy, FeedState(), "stranger", "/search/x", T)
    assert (decision.allowed, decision.caps) == (True, [])
    assert headers(decision.caps, T) == []


def test_rate_limit_headers(policy: Policy) -> None:
    month = 1_646_092_800_000
    feed = feed_with(
        record("app", "a1", "tier:std:calls-15m", START_15M, START_15M + Q, 3),
        record("app", "a1", "tier:std:search-1h", START_1H, START_1H + H, 4),
        record("org", "acme", "org:acme:records-month", month, 1_648_771_200_000, 60),
    )
    decision = check(policy, feed, "a1", "/search/recent", T + 1000)
    got = dict(headers(decision.caps, T + 1000))
    assert got == {
        "RateLimit-Policy": '"tier:std:calls-15m";q=10;w=900, "tier:std:search-1h";q=5;w=3600',
        "RateLimit": '"tier:std:calls-15m";r=7;t=899, "tier:std:search-1h";r=1;t=1799',
        # the tightest: one call left in the hour
        "RateLimit-Limit": "5",
        "RateLimit-Remaining": "1",
        "RateLimit-Reset": "1799",
        "X-RateLimit-Limit-15m": "10",
        "X-RateLimit-Remaining-15m": "7",
        "X-RateLimit-Limit-Hour": "5",
        "X-RateLimit-Remaining-Hour": "1",
        "X-Meter-Records-Limit": "100",
        "X-Meter-Records-Remaining": "40",
        "X-Meter-Records-Reset": str((1_648_771_200_000 - T - 1000) // 1000),
    }
    # the soft daily cap is not advertised
    assert "calls-1d" not in got["RateLimit-Policy"]


def test_a_calendar_month_calls_cap_has_no_window_length() -> None:
    doc = {
        "tiers": {"t": {"caps": [{"id": "m", "metric": "calls", "window": "month", "limit": 9}]}},
        "orgs": {"o": {}},
        "apps": {"a": {"org": "o", "tier": "t"}},
    }
    decision = check(load_policy(doc), FeedState(), "a", None, T)
    got = dict(headers(decision.caps, T))
    assert got["RateLimit-Policy"] == '"tier:t:m";q=9'
    assert got["X-RateLimit-Limit-Month"] == "9"

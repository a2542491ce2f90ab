"""Policy loading: caps, lookups, restricted uses, validation paths, the shipped example."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from meter.core.errors import PolicyError
from meter.core.policy import (
    App,
    Cap,
    Org,
    Policy,
    RestrictedUse,
    Threshold,
    load_policy,
)
from meter.core.policy_parse import ALLOWED_FIELDS
from meter.core.windows import CalendarMonthWindow, FixedWindow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "meter" / "examples" / "case-2022.yaml"
SCHEMA = ROOT / "schemas" / "policy.schema.json"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

MICROSOFT_APPS = {
    "xbox-one-social": "Xbox One Social",
    "bing-pages": "Bing Pages",
    "bing-pages-2": "Bing Pages 2",
    "azure": "Azure",
    "power-platform": "Power Platform",
    "ads": "Ads",
    "global-ads": "Global Ads",
    "azure-logic-apps-fairfax": "Azure Logic Apps for Fairfax",
}


def ms(text: str) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(milliseconds=1)


def base_doc() -> dict[str, Any]:
    """A small valid document; each error case breaks one thing in a fresh copy."""
    return {
        "version": 1,
        "tiers": {
            "enterprise": {
                "caps": [
                    {"id": "calls-15m", "metric": "calls", "window": "15m", "limit": 450},
                    {"id": "records-1d", "metric": "records", "window": "1d", "limit": 1000},
                ]
            }
        },
        "orgs": {
            "microsoft": {
                "name": "Microsoft",
                "caps": [
                    {
                        "id": "records-month",
                        "metric": "records",
                        "window": {"month": {"reset_day": 1, "timezone": "UTC"}},
                        "limit": 2_000_000,
                        "status": ["2xx"],
                        "endpoints": ["/2/tweets/search/*"],
                    }
                ],
            },
            "openai": {"name": "OpenAI", "government_notice": "2022-06-01"},
        },
        "apps": {
            "xbox-one-social": {"org": "microsoft", "tier": "enterprise", "name": "Xbox One"},
            "bing-pages": {
                "org": "microsoft",
                "tier": "enterprise",
                "caps": [{"id": "calls-1h", "metric": "calls", "window": "1h", "limit": 1000}],
            },
            "gpt": {"org": "openai"},
        },
        "restricted_uses": [{"recipient": "government", "requires": "notice"}],
    }


@pytest.fixture(scope="module")
def example() -> Policy:
    return load_policy(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")))


# --- the shipped example ------------------------------------------------------------------


def test_example_loads_with_the_case_shape(example: Policy) -> None:
    microsoft = example.orgs["microsoft"]
    assert microsoft.name == "Microsoft"
    assert microsoft.government_notice_ms is None
    ms_apps = {a.id: a.name for a in example.apps.values() if a.org_id == "microsoft"}
    assert ms_apps == MICROSOFT_APPS
    assert all(example.apps[a].tier == "enterprise" for a in MICROSOFT_APPS)
    assert example.orgs["openai"].government_notice_ms is not None
    month = {c.metric: c for c in example.org_caps("microsoft")}
    assert month["records"].window == CalendarMonthWindow(1, "UTC")
    assert month["records"].statuses == ((200, 299),)
    assert month["calls"].window.name == "month"
    fifteen = example.app_caps("bing-pages")[0]
    assert (fifteen.key, fifteen.window, fifteen.limit) == (
        "tier:enterprise:calls-15m",
        FixedWindow(15 * 60_000),
        450,
    )


def test_describe_mentions_every_app_and_cap(example: Policy) -> None:
    text = example.describe()
    for app_id, name in MICROSOFT_APPS.items():
        assert f"app {app_id} ({name}), tier enterprise:" in text
    for key in example.caps:
        assert key in text
    assert "org microsoft (Microsoft)\n  government notice: none" in text
    assert "government notice: 2022-06-01T00:00:00Z" in text
    assert "recipient government: requires a notice on record, else a critical alert" in text
    assert "status 2xx" in text
    assert "endpoints /2/tweets/search/*" in text
    assert "50,000,000" in text


def test_describe_is_deterministic_whatever_the_document_order() -> None:
    doc = base_doc()
    reordered = copy.deepcopy(doc)
    reordered["apps"] = dict(reversed(list(doc["apps"].items())))
    reordered["orgs"] = dict(reversed(list(doc["orgs"].items())))
    text = load_policy(doc).describe()
    assert text == load_policy(reordered).describe()
    assert text.index("app bing-pages ") < text.index("app xbox-one-social ")
    assert text.index("org microsoft ") < text.index("org openai ")


def test_example_matches_the_json_schema_field_lists() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    defs = schema["$defs"]
    assert tuple(schema["properties"]) == ALLOWED_FIELDS["policy"]
    for kind in ("tier", "org", "app", "cap", "restricted_use"):
        assert tuple(defs[kind]["properties"]) == ALLOWED_FIELDS[kind], kind
    threshold_object = defs["cap"]["properties"]["thresholds"]["items"]["anyOf"][1]
    assert tuple(threshold_object["properties"]) == ALLOWED_FIELDS["threshold"]
    assert defs["id"]["pattern"] == "^[A-Za-z0-9._:-]{1,128}$"


# --- lookups ------------------------------------------------------------------------------


def test_cap_lookups(example: Policy) -> None:
    keys = [c.key for c in example.app_caps("azure-logic-apps-fairfax")]
    assert keys == [
        "tier:enterprise:calls-15m",
        "tier:enterprise:records-1d",
        "app:azure-logic-apps-fairfax:calls-1h",
    ]
    assert [c.level for c in example.app_caps("azure-logic-apps-fairfax")] == ["app"] * 3
    assert [c.key for c in example.org_caps("microsoft")] == [
        "org:microsoft:records-month",
        "org:microsoft:calls-month",
    ]
    assert {c.level for c in example.org_caps("microsoft")} == {"org"}
    assert example.app_caps("unknown-app") == ()
    assert example.org_caps("unknown-org") == ()
    assert example.caps["org:microsoft:records-month"].limit == 50_000_000


def test_app_without_tier_has_only_its_own_caps() -> None:
    policy = load_policy(base_doc())
    assert policy.app_caps("gpt") == ()
    assert [c.key for c in policy.app_caps("bing-pages")][-1] == "app:bing-pages:calls-1h"


@pytest.mark.parametrize(
    ("app_id", "claimed", "expected"),
    [
        ("bing-pages", "someone-else", "microsoft"),
        ("bing-pages", None, "microsoft"),
        ("unknown-app", "acme", "acme"),
        ("unknown-app", None, None),
    ],
)
def test_org_of(example: Policy, app_id: str, claimed: str | None, expected: str | None) -> None:
    assert example.org_of(app_id, claimed) == expected
    assert example.known_app(app_id) == (app_id != "unknown-app")


def test_windows_are_distinct_and_sorted_by_name(example: Policy) -> None:
    assert [w.name for w in example.windows] == [
        "15m",
        "1d",
        "1h",
        "month",
        "month:reset=5:tz=America/New_York",
    ]


@pytest.mark.parametrize(
    ("org_id", "recipient", "time", "violated"),
    [
        ("microsoft", "government", "2022-03-01T00:00:00Z", True),
        ("microsoft", "GOVERNMENT", "2022-03-01T00:00:00Z", True),
        ("openai", "government", "2022-05-31T23:59:59.999Z", True),
        ("openai", "government", "2022-06-01T00:00:00Z", False),
        ("openai", "Government", "2023-01-01T00:00:00Z", False),
        ("unknown-org", "government", "2023-01-01T00:00:00Z", True),
        (None, "government", "2023-01-01T00:00:00Z", True),
        ("microsoft", "commercial", "2022-03-01T00:00:00Z", False),
        ("microsoft", None, "2022-03-01T00:00:00Z", False),
    ],
)
def test_restricted_violation(
    example: Policy, org_id: str | None, recipient: str | None, time: str, violated: bool
) -> None:
    rule = example.restricted_violation(org_id, recipient, ms(time))
    if violated:
        assert rule == RestrictedUse("government", "notice", "critical")
    else:
        assert rule is None


# --- caps ---------------------------------------------------------------------------------


def make_cap(**extra: Any) -> Cap:
    return Cap(
        id="c", key="org:o:c", level="org", metric="calls", window=FixedWindow(60_000), limit=10,
        **extra,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("endpoints", "statuses", "endpoint", "status", "expected"),
    [
        (None, None, None, 500, True),
        (None, None, "/anything", 200, True),
        (None, ((200, 299),), "/x", 200, True),
        (None, ((200, 299),), "/x", 299, True),
        (None, ((200, 299),), "/x", 300, False),
        (None, ((200, 299), (429, 429)), "/x", 429, True),
        (None, ((200, 299), (429, 429)), "/x", 428, False),
        (frozenset({"/2/tweets"}), None, "/2/tweets", 200, True),
        (frozenset({"/2/tweets"}), None, "/2/tweets/1", 200, False),
        (frozenset({"/2/tweets/search/*"}), None, "/2/tweets/search/recent", 200, True),
        (frozenset({"/2/tweets/search/*"}), None, "/2/tweets/search/", 200, True),
        (frozenset({"/2/tweets/search/*"}), None, "/2/tweets/search", 200, False),
        (frozenset({"/2/tweets/search/*"}), None, None, 200, False),
        (frozenset({"/a", "/b/*"}), ((200, 299),), "/b/c", 200, True),
        (frozenset({"/a", "/b/*"}), ((200, 299),), "/b/c", 404, False),
        (frozenset({"/a", "/b/*"}), ((200, 299),), "/c", 200, False),
    ],
)
def test_cap_matches(
    endpoints: frozenset[str] | None,
    statuses: tuple[tuple[int, int], ...] | None,
    endpoint: str | None,
    status: int,
    expected: bool,
) -> None:
    cap = make_cap(endpoints=endpoints, statuses=statuses)
    assert cap.matches(endpoint, status) is expected
    assert cap.filtered is (endpoints is not None or statuses is not None)


def test_cap_defaults_and_ordering() -> None:
    cap = make_cap(thresholds=(Threshold(1.0, "critical"), Threshold(0.5, "warning")))
    assert cap.thresholds == (Threshold(0.5, "warning"), Threshold(1.0, "critical"))
    assert make_cap().thresholds == (Threshold(0.8, "warning"), Threshold(1.0, "critical"))
    assert hash(make_cap()) == hash(make_cap())


@pytest.mark.parametrize(
    "extra",
    [{"limit": 0}, {"limit": True}, {"level": "tier"}, {"metric": "bytes"}, {"thresholds": ()}],
)
def test_cap_rejects_invalid_values(extra: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "id": "c", "key": "org:o:c", "level": "org", "metric": "calls",
        "window": FixedWindow(60_000), "limit": 10,
    }  # fmt: skip
    with pytest.raises(ValueError):  # noqa: PT011 - the field decides the message
        Cap(**(fields | extra))


def cap_in(doc: dict[str, Any]) -> dict[str, Any]:
    cap: dict[str, Any] = doc["tiers"]["enterprise"]["caps"][0]
    return cap


@pytest.mark.parametrize(
    ("field", "value", "attribute", "expected"),
    [
        ("thresholds", [0.8, 1.0], "thresholds",
         (Threshold(0.8, "warning"), Threshold(1.0, "critical"))),
        ("thresholds", [1.2, 0.5], "thresholds",
         (Threshold(0.5, "warning"), Threshold(1.2, "critical"))),
        ("thresholds", [{"at": 0.9, "severity": "page"}, 1], "thresholds",
         (Threshold(0.9, "page"), Threshold(1.0, "critical"))),
        ("thresholds", [{"at": 1.0}], "thresholds", (Threshold(1.0, "critical"),)),
        ("status", ["2xx", 429, "500-599"], "statuses", ((200, 299), (429, 429), (500, 599))),
        ("status", ["5XX", "2xx", "300-310", "429"], "statuses",
         ((200, 310), (429, 429), (500, 599))),
        ("endpoints", ["/a", "/b/*", "/a"], "endpoints", frozenset({"/a", "/b/*"})),
        ("window", {"month": {"reset_day": 31, "timezone": "Asia/Tokyo"}}, "window",
         CalendarMonthWindow(31, "Asia/Tokyo")),
        ("window", 90, "window", FixedWindow(90_000)),
    ],
)  # fmt: skip
def test_cap_fields_parse(field: str, value: object, attribute: str, expected: object) -> None:
    doc = base_doc()
    cap_in(doc)[field] = value
    cap = load_policy(doc).app_caps("xbox-one-social")[0]
    assert getattr(cap, attribute) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2022-06-01", "2022-06-01T00:00:00Z"),
        (date(2022, 6, 1), "2022-06-01T00:00:00Z"),
        ("2022-06-01T09:30:00Z", "2022-06-01T09:30:00Z"),
        ("2022-06-01T09:30:00.250+02:00", "2022-06-01T07:30:00.250Z"),
        (datetime(2022, 6, 1, 9, 30, tzinfo=timezone(timedelta(hours=-4))), "2022-06-01T13:30:00Z"),
        (None, None),
    ],
)
def test_government_notice_forms(value: object, expected: str | None) -> None:
    doc = base_doc()
    doc["orgs"]["openai"]["government_notice"] = value
    notice = load_policy(doc).orgs["openai"].government_notice_ms
    assert notice == (None if expected is None else ms(expected))


def test_names_default_to_ids_and_null_sections_are_empty() -> None:
    policy = load_policy(base_doc())
    assert policy.apps["gpt"].name == "gpt"
    assert policy.apps["gpt"].tier is None
    empty = load_policy({"tiers": None, "orgs": None, "apps": None, "restricted_uses": None})
    assert (dict(empty.orgs), dict(empty.apps), empty.restricted_uses, empty.windows) == (
        {},
        {},
        (),
        (),
    )


def test_policy_constructed_directly_checks_references() -> None:
    org = Org("o", "O", None, ())
    with pytest.raises(PolicyError) as caught:
        Policy(orgs={"o": org}, apps={"a": App("a", "missing", None, "A")})
    assert caught.value.path == "apps.a.org"
    with pytest.raises(PolicyError) as caught:
        Policy(orgs={"o": org}, apps={"a": App("a", "o", "gold", "A")})
    assert caught.value.path == "apps.a.tier"


# --- validation errors --------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], object]


def _set(*keys_then_value: Any) -> Mutation:
    """Set doc[k1][k2]... = value; the last argument is the value."""
    *keys, value = keys_then_value

    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return mutate


def _append(*keys_then_value: Any) -> Mutation:
    *keys, value = keys_then_value

    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in keys:
            target = target[key]
        target.append(value)

    return mutate


def _delete(*keys: str | int) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return mutate


T0 = ("tiers", "enterprise", "caps", 0)
O0 = ("orgs", "microsoft", "caps", 0)

ERRORS: list[tuple[str, Mutation, str, str]] = [
    ("version", _set("version", 2), "version", "unsupported version 2"),
    ("version-string", _set("version", "1"), "version", "unsupported version"),
    ("top-unknown", _set("tier", {}), "tier",
     "unknown field 'tier' (allowed: version, tiers, orgs"),
    ("cap-typo", _set(*T0, "limt", 5), "tiers.enterprise.caps[0].limt",
     "unknown field 'limt' (allowed: id, metric, window, limit"),
    ("cap-missing-limit", _delete(*T0, "limit"), "tiers.enterprise.caps[0].limit",
     "missing required field 'limit'"),
    ("limit-zero", _set(*T0, "limit", 0), "tiers.enterprise.caps[0].limit", "positive integer"),
    ("limit-bool", _set(*T0, "limit", True), "tiers.enterprise.caps[0].limit", "positive integer"),
    ("limit-float", _set(*T0, "limit", 1.5), "tiers.enterprise.caps[0].limit", "positive integer"),
    ("limit-string", _set(*T0, "limit", "450"), "tiers.enterprise.caps[0].limit",
     "positive integer"),
    ("metric", _set(*T0, "metric", "tweets"), "tiers.enterprise.caps[0].metric",
     "must be one of calls, records"),
    ("dup-cap-id", _set(*T0, "id", "records-1d"), "tiers.enterprise.caps[1].id",
     "duplicate cap id 'records-1d'"),
    ("cap-id-pipe", _set(*T0, "id", "calls|15m"), "tiers.enterprise.caps[0].id", "invalid id"),
    ("cap-id-empty", _set(*T0, "id", ""), "tiers.enterprise.caps[0].id", "invalid id"),
    ("cap-id-long", _set(*T0, "id", "x" * 129), "tiers.enterprise.caps[0].id", "invalid id"),
    ("cap-not-mapping", _set(*T0[:-1], ["15m"]), "tiers.enterprise.caps[0]", "must be a mapping"),
    ("caps-not-list", _set("orgs", "microsoft", "caps", {"id": "x"}), "orgs.microsoft.caps",
     "must be a list"),
    ("window", _set(*O0, "window", "15x"), "orgs.microsoft.caps[0].window", "invalid duration"),
    ("window-reset-day", _set(*O0, "window", {"month": {"reset_day": 40}}),
     "orgs.microsoft.caps[0].window.month.reset_day", "1 to 31"),
    ("window-tz", _set(*O0, "window", {"month": {"timezone": "Europe/Atlantis"}}),
     "orgs.microsoft.caps[0].window.month.timezone", "unknown IANA time zone"),
    ("threshold-zero", _set(*T0, "thresholds", [0, 1.0]), "tiers.enterprise.caps[0].thresholds[0]",
     "> 0 and <= 10"),
    ("threshold-big", _set(*T0, "thresholds", [0.5, 10.5]),
     "tiers.enterprise.caps[0].thresholds[1]", "> 0 and <= 10"),
    ("threshold-dup", _set(*T0, "thresholds", [0.8, 0.8]),
     "tiers.enterprise.caps[0].thresholds[1]", "duplicate threshold ratio 0.8"),
    ("threshold-text", _set(*T0, "thresholds", ["high"]),
     "tiers.enterprise.caps[0].thresholds[0]", "must be a number"),
    ("threshold-empty", _set(*T0, "thresholds", []), "tiers.enterprise.caps[0].thresholds",
     "at least one"),
    ("threshold-field", _set(*T0, "thresholds", [{"at": 0.9, "level": "x"}]),
     "tiers.enterprise.caps[0].thresholds[0].level",
     "unknown field 'level' (allowed: at, severity)"),
    ("threshold-no-at", _set(*T0, "thresholds", [{"severity": "x"}]),
     "tiers.enterprise.caps[0].thresholds[0].at", "missing required field 'at'"),
    ("status-class", _set(*O0, "status", ["2xx", "6xx"]), "orgs.microsoft.caps[0].status[1]",
     "invalid status '6xx'"),
    ("status-low", _set(*O0, "status", [99]), "orgs.microsoft.caps[0].status[0]", "within 100-599"),
    ("status-range", _set(*O0, "status", ["599-500"]), "orgs.microsoft.caps[0].status[0]",
     "low to high"),
    ("status-scalar", _set(*O0, "status", "2xx"), "orgs.microsoft.caps[0].status",
     "must be a list"),
    ("enforcement", _set(*O0, "enforcement", "strict"), "orgs.microsoft.caps[0].enforcement",
     "must be one of hard, soft, got 'strict'"),
    ("endpoint-empty", _set(*O0, "endpoints", [""]), "orgs.microsoft.caps[0].endpoints[0]",
     "non-empty string"),
    ("endpoint-star", _set(*O0, "endpoints", ["/2/*/search"]),
     "orgs.microsoft.caps[0].endpoints[0]", "only allowed at the end"),
    ("endpoint-type", _set(*O0, "endpoints", [5]), "orgs.microsoft.caps[0].endpoints[0]",
     "non-empty string"),
    ("app-unknown-org", _set("apps", "bing-pages", "org", "msft"), "apps.bing-pages.org",
     "unknown org 'msft' (known: microsoft, openai)"),
    ("app-missing-org", _delete("apps", "bing-pages", "org"), "apps.bing-pages.org",
     "missing required field 'org'"),
    ("app-unknown-tier", _set("apps", "bing-pages", "tier", "gold"), "apps.bing-pages.tier",
     "unknown tier 'gold' (known: enterprise)"),
    ("app-unknown-field", _set("apps", "bing-pages", "owner", "x"), "apps.bing-pages.owner",
     "unknown field 'owner' (allowed: org, tier, name, caps)"),
    ("app-id-pipe", _set("apps", "bing|pages", {"org": "microsoft"}), "apps.bing|pages",
     "invalid id"),
    ("tier-id-int", _set("tiers", 5, {}), "tiers.5", "must be a string"),
    ("org-name-empty", _set("orgs", "microsoft", "name", " "), "orgs.microsoft.name",
     "non-empty string"),
    ("org-not-mapping", _set("orgs", "microsoft", ["x"]), "orgs.microsoft", "must be a mapping"),
    ("notice-text", _set("orgs", "openai", "government_notice", "June 1st"),
     "orgs.openai.government_notice", "must be a date"),
    ("notice-bad-date", _set("orgs", "openai", "government_notice", "2022-02-30"),
     "orgs.openai.government_notice", "invalid date"),
    ("notice-naive", _set("orgs", "openai", "government_notice", datetime(2022, 6, 1, 9)),
     "orgs.openai.government_notice", "needs a UTC offset"),
    ("rule-requires", _set("restricted_uses", 0, "requires", "approval"),
     "restricted_uses[0].requires", "unsupported requirement 'approval' (supported: notice)"),
    ("rule-missing-recipient", _delete("restricted_uses", 0, "recipient"),
     "restricted_uses[0].recipient", "missing required field"),
    ("rule-dup", _append("restricted_uses", {"recipient": "Government", "requires": "notice"}),
     "restricted_uses[1].recipient", "duplicate rule"),
    ("rules-not-list", _set("restricted_uses", {"recipient": "x"}), "restricted_uses",
     "must be a list"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [pytest.param(m, p, msg, id=name) for name, m, p, msg in ERRORS],
)
def test_policy_errors_name_the_field(mutate: Mutation, path: str, message: str) -> None:
    doc = base_doc()
    mutate(doc)
    with pytest.raises(PolicyError) as caught:
        load_policy(doc)
    assert caught.value.path == path
    assert message in caught.value.message


def test_caps_are_enforced_hard_unless_soft() -> None:
    doc = base_doc()
    doc["orgs"]["microsoft"]["caps"][0]["enforcement"] = "soft"
    policy = load_policy(doc)
    assert [c.enforcement for c in policy.org_caps("microsoft")] == ["soft"]
    assert {c.enforcement for c in policy.app_caps("bing-pages")} == {"hard"}


@pytest.mark.parametrize("document", [None, [], "version: 1", 5])
def test_top_level_must_be_a_mapping(document: object) -> None:
    with pytest.raises(PolicyError, match="must be a mapping") as caught:
        load_policy(document)
    assert caught.value.path == ""


def test_cap_keys_must_be_globally_unique() -> None:
    # ':' is allowed in ids, so two scopes could spell the same key; the loader refuses.
    doc = {
        "tiers": {
            "a:b": {"caps": [{"id": "c", "metric": "calls", "window": "1m", "limit": 1}]},
            "a": {"caps": [{"id": "b:c", "metric": "calls", "window": "1m", "limit": 1}]},
        }
    }
    with pytest.raises(PolicyError, match="cap key 'tier:a:b:c' is already used") as caught:
        load_policy(doc)
    assert caught.value.path == "tiers.a.caps[0].id"

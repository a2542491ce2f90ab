"""Usage statements from an SQLite usage store filled with what meter's own ledger published for
a year of the 2022 case: figures equal to the simulator's ground truth, the same bytes for the
same cut in every format, a changed number caught by `verify`, and supersession."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from meter.adapters.report.demo_statement import write_demo_statement
from meter.adapters.report.outputs import csv_zip, render
from meter.adapters.report.service import Issued, issue, rebuild_request
from meter.adapters.report.signing import load_key, sign
from meter.adapters.report.source import StatementRequest
from meter.adapters.report.tables import csv_files
from meter.adapters.report.verify import verify_statement
from meter.adapters.store.database import Database
from meter.adapters.store.statement_queries import get_statement, successor
from meter.core.statement import Rules, canonical_bytes, statement_id
from tests.harness.statements import (
    DEMO_POLICY,
    YEAR_2022,
    Case,
    case_2022,
    demo_policy,
    store_case,
    store_records,
)

ORG = "microsoft"
YEAR = StatementRequest(ORG, *YEAR_2022)
SHORT = Rules(grace_ms=60_000, late_horizon_ms=3_600_000, history_horizon_ms=3_600_000)
"""Horizons short enough for the case's last events (in January 2023) to make 2022 final."""
HMAC_ENV = {"STATEMENT_KEY": "a shared secret of some length"}


@dataclass
class Store:
    case: Case
    db: Database
    last_ingest: int
    path: Path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    case = case_2022(3000, policy=demo_policy(tight=True))
    path = tmp_path_factory.mktemp("statements") / "meter.db"
    db, last = store_case(path, case)
    yield Store(case, db, last, path)
    db.close()


def month(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m")


def org_apps(case: Case) -> set[str]:
    return {i.app_id for i in case.items if i.org == ORG}


def truth_days(case: Case, subject_type: str) -> list[Any]:
    low, high = YEAR_2022
    return [
        w
        for w in case.truth.windows
        if w.window == "1d" and w.subject_type == subject_type and low <= w.start_ms < high
    ]


def test_totals_apps_months_caps_and_restricted_use_equal_the_ground_truth(store: Store) -> None:
    case = store.case
    doc = issue(store.db, case.policy, YEAR, Rules(), record=False).doc
    days = [w for w in truth_days(case, "org") if w.subject == ORG]
    assert doc["totals"] == {
        "calls": sum(w.calls for w in days),
        "records": sum(w.records for w in days),
    }
    apps = org_apps(case)
    by_app: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_app_month: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for w in truth_days(case, "app"):
        if w.subject in apps:
            for cell in (by_app[w.subject], by_app_month[(w.subject, month(w.start_ms))]):
                cell[0] += w.calls
                cell[1] += w.records
    assert {r["app"]: [r["calls"], r["records"]] for r in doc["by_app"]} == by_app
    got = {(r["app"], r["month"]): [r["calls"], r["records"]] for r in doc["by_app_month"]}
    assert {k: v for k, v in got.items() if v != [0, 0]} == by_app_month
    assert len(got) == len(apps) * 12
    assert doc["data_quality"]["unknown_apps"] == ["shadow-analytics"]
    # data quality: the latest revision of each of the organisation's days, as published
    latest: dict[str, dict[str, Any]] = {}
    for w in case.windows:
        start = w["window"]["start"]
        mine = w["subject"] == ORG and w["window"]["size"] == "1d" and start.startswith("2022")
        if mine and (start not in latest or w["revision"] > latest[start]["revision"]):
            latest[start] = w
    quality = doc["data_quality"]
    assert quality["windows"] == len(latest) == 365
    assert quality["late_events"] == sum(w["late_events"] for w in latest.values()) > 0
    assert quality["amended_windows"] == sum(1 for w in latest.values() if w["revision"] > 0)
    assert quality["expired_windows"] == sum(1 for w in latest.values() if w["base"] == "expired")
    assert quality["expired_windows"] > 0
    assert doc["data_quality"]["unattributed"] == {"calls": 0, "records": 0}
    # the organisation's months against the truth's monthly windows (its contract month)
    months = {
        (w.window, month(w.start_ms)): w
        for w in case.truth.windows
        if w.subject == ORG and w.window == "month" and w.start_ms < YEAR_2022[1]
    }
    for m in doc["by_month"]:
        truth = months[("month", m["month"])]
        assert [m["calls"], m["records"]] == [truth.calls, truth.records], m["month"]
    assert {c["cap"] for c in doc["by_month"][0]["caps"]} == {
        "org:microsoft:calls-month",
        "org:microsoft:records-month",
    }
    # every cap crossing the truth expects, once
    expected = sorted(
        (a.subject, a.cap, a.threshold, a.window_start)
        for a in case.truth.alerts
        if a.kind == "cap"
        and (a.subject == ORG or a.subject in apps)
        and YEAR_2022[0] <= a.window_start < YEAR_2022[1]
    )
    crossed = sorted(
        (
            c["subject"],
            c["cap"],
            float(c["threshold"]),
            int(datetime.fromisoformat(c["window"]["start"]).timestamp() * 1000),
        )
        for c in doc["caps_crossed"]
    )
    assert crossed == expected
    assert any(c["cap"] == "org:microsoft:records-month" for c in doc["caps_crossed"])
    # government use per month and app, from the calls the simulator sent (each id once)
    sent: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    seen = set()
    for item in case.items:
        call = item.event
        if call is None or item.org != ORG or (call.app_id, call.id) in seen:
            continue
        seen.add((call.app_id, call.id))
        if (call.recipient or "").casefold() == "government" and item.time_ms < YEAR_2022[1]:
            cell = sent[(month(item.time_ms), call.app_id)]
            cell[0] += 1
            cell[1] += call.records
    ru = doc["restricted_use"]
    reported = {
        (m["month"], a["app"]): [a["calls"], a["records"]]
        for m in ru["by_month"]
        for a in m["apps"]
    }
    assert reported == sent
    assert sum(d["calls"] for d in ru["days"]) == sum(c for c, _ in sent.values())
    assert ru["alerts"]
    assert {a["app"] for a in ru["alerts"]} <= {app for _, app in sent}


def late_revision(case: Case, add_calls: int, step: int = 1) -> dict[str, Any]:
    """Revision `step` after the last of the organisation's busiest March day, with `add_calls`
    more calls."""
    march = [
        w
        for w in case.windows
        if w["subject"] == ORG
        and w["window"]["size"] == "1d"
        and w["window"]["start"].startswith("2022-03")
    ]
    base = max(march, key=lambda w: (w["calls"], w["revision"]))
    return {
        **base,
        "id": f"{base['id'][:24]}{add_calls:08x}",
        "revision": base["revision"] + step,
        "calls": base["calls"] + add_calls,
        "late_events": base["late_events"] + add_calls,
    }


def test_the_same_cut_gives_the_same_bytes_in_every_format(store: Store, tmp_path: Path) -> None:
    case = store.case
    first = issue(store.db, case.policy, YEAR, Rules(), record=False)
    assert first.doc["as_of"] is not None

    def renders(i: Issued) -> list[bytes]:
        return [render(i.doc, i.body, i.id, f) for f in ("json", "html", "table")] + [
            csv_zip(i.doc, i.id),
            *csv_files(i.doc, i.id).values(),
        ]

    # a later store transaction (a late revision) is not counted as of the earlier cut
    (db, later) = (
        store.db,
        store_records(
            store.db,
            [late_revision(case, 7)],
            first_offset=10**6,
            ingest_ms=store.last_ingest + 60_000,
        ),
    )
    try:
        cut = datetime.fromisoformat(first.doc["as_of"]).timestamp() * 1000
        for as_of in (int(cut), int(cut) + 59_000):  # any time before the next transaction
            again = issue(db, case.policy, replace(YEAR, as_of_ms=as_of), Rules(), record=False)
            assert again.body == first.body
            assert renders(again) == renders(first)
        now = issue(db, case.policy, YEAR, Rules(), record=False)
        assert now.doc["totals"]["calls"] == first.doc["totals"]["calls"] + 7
        assert (
            now.doc["data_quality"]["late_events"] == first.doc["data_quality"]["late_events"] + 7
        )
        assert now.doc["inputs"]["windows"]["count"] == first.doc["inputs"]["windows"]["count"] + 1
        assert now.doc["as_of"] != first.doc["as_of"]
    finally:
        db.execute("DELETE FROM window_revision WHERE ingested_at = ?", (later,))
        db.execute("DELETE FROM window_revision_cell WHERE record_id LIKE ?", ("%00000007",))
    manifest = json.loads(csv_files(first.doc, first.id)["manifest.json"])
    assert manifest["statement"] == first.id
    assert {f["name"] for f in manifest["files"]} >= {
        "by_app.csv",
        "by_month.csv",
        "caps_crossed.csv",
        "restricted_days.csv",
    }


def flipped(body: bytes) -> bytes:
    doc = json.loads(body)
    doc["totals"]["records"] += 1
    return canonical_bytes(doc)


def test_verify_catches_one_changed_number(store: Store, tmp_path: Path) -> None:
    case = store.case
    key_file = tmp_path / "ed25519.pem"
    key_file.write_bytes(ED25519_PEM)
    keys = [
        load_key("hmac:STATEMENT_KEY", HMAC_ENV, "--sign", private=True),
        load_key(f"ed25519:{key_file}", {}, "--sign", private=True),
    ]
    issued = issue(store.db, case.policy, YEAR, Rules(), key=keys[1], record=False)
    for key in keys:
        sig = sign(issued.body, key)
        intact = verify_statement(
            issued.body,
            signature=sig,
            key=key,
            expected_id=issued.id,
            db=store.db,
            policy=case.policy,
        )
        assert intact.ok, intact.lines
        assert any("identical, byte for byte" in line for line in intact.lines)
        changed = flipped(issued.body)
        caught = verify_statement(
            changed, signature=sig, key=key, expected_id=issued.id, db=store.db, policy=case.policy
        )
        assert not caught.ok
        fails = [line for line in caught.lines if line.startswith("FAIL")]
        assert len(fails) == 3, caught.lines  # the id, the signature, the store
        assert "the file was changed" in fails[0]
        assert "it signs statement" in fails[1]
        assert fails[2].endswith(
            f"first in section totals.records: file {issued.doc['totals']['records'] + 1}, "
            f"store {issued.doc['totals']['records']}"
        )
    # a signature over the changed bytes made with another key does not pass either
    forged = sign(flipped(issued.body), load_key("hmac:K", {"K": "x" * 20}, "k", private=True))
    assert not verify_statement(flipped(issued.body), signature=forged, key=keys[0]).ok
    # the key named in an Ed25519 signature checks it when no key is given
    alone = verify_statement(issued.body, signature=sign(issued.body, keys[1]))
    assert alone.ok
    assert "the key named in the signature" in alone.lines[-2]


def test_a_late_change_after_a_final_statement_supersedes_it(store: Store) -> None:
    case = store.case
    db = store.db
    s1 = issue(db, case.policy, YEAR, SHORT)
    assert (s1.doc["status"], s1.doc["supersedes"], s1.recorded) == ("final", None, True)
    provisional = issue(db, case.policy, YEAR, Rules())
    assert provisional.doc["status"] == "provisional"
    late = store_records(
        db, [late_revision(case, 3)], first_offset=2 * 10**6, ingest_ms=store.last_ingest + 120_000
    )
    try:
        s2 = issue(db, case.policy, YEAR, SHORT)
        assert (s2.doc["status"], s2.doc["supersedes"]) == ("final", s1.id)
        assert s2.doc["totals"]["calls"] == s1.doc["totals"]["calls"] + 3
        # provisional statements are never superseded: they were expected to change
        assert issue(db, case.policy, YEAR, Rules()).doc["supersedes"] is None
        # a later cut with the same figures still names the statement they replaced
        other_org = next(w for w in case.windows if w["org_id"] == "openai")
        store_records(
            db,
            [{**other_org, "id": "f" * 32, "revision": 99}],
            first_offset=3 * 10**6,
            ingest_ms=late + 60_000,
        )
        s3 = issue(db, case.policy, YEAR, SHORT)
        assert s3.id != s2.id
        assert s3.doc["supersedes"] == s1.id
        # another late change: the new figures supersede the latest final ones before them
        store_records(
            db, [late_revision(case, 5, step=2)], first_offset=4 * 10**6, ingest_ms=late + 120_000
        )
        s4 = issue(db, case.policy, YEAR, SHORT)
        assert s4.doc["totals"]["calls"] == s1.doc["totals"]["calls"] + 5
        assert s4.doc["supersedes"] == s3.id
        assert successor(db, s1.id) == s2.id
        stored = get_statement(db, s2.id)
        assert stored is not None
        assert (stored.body, stored.status, stored.supersedes) == (s2.body, "final", s1.id)
        # the superseded statement is still rebuilt exactly as of its own cut
        request, rules = rebuild_request(s1.doc)
        assert issue(db, case.policy, request, rules, record=False).body == s1.body
    finally:
        for offset in (2 * 10**6, 3 * 10**6, 4 * 10**6):
            db.execute("DELETE FROM window_revision WHERE source_offset = ?", (offset,))


def test_the_html_is_one_self_contained_file_that_says_how_to_verify_it(store: Store) -> None:
    issued = issue(store.db, store.case.policy, YEAR, Rules(), record=False)
    html = render(issued.doc, issued.body, issued.id, "html").decode()
    lowered = html.lower()
    for banned in ("<script", "src=", "href=", "url(", "@import", "<link", "<iframe", "<img"):
        assert banned not in lowered, banned
    assert lowered.count("http") == lowered.count('xmlns="http://www.w3.org/2000/svg"')
    assert html.count("<svg") == 4  # records and calls per month, endpoints, restricted use
    assert issued.id in html
    assert "meter report verify" in html
    assert "cap org:microsoft:records-month: 8,000 a month" in html
    assert html == render(issued.doc, issued.body, issued.id, "html").decode()


def test_signatures_name_their_statement_and_key(tmp_path: Path) -> None:
    body = b'{"kind":"x"}'
    hmac_key = load_key("hmac:STATEMENT_KEY", HMAC_ENV, "--sign", private=True)
    sig = json.loads(sign(body, hmac_key))
    assert sig["statement"] == statement_id(body)
    assert (sig["alg"], sig["keyid"]) == ("HS256", hmac_key.keyid)
    assert len(sig["keyid"]) == 16
    path = tmp_path / "k.pem"
    path.write_bytes(ED25519_PEM)
    ed = load_key(f"ed25519:{path}", {}, "--sign", private=True)
    assert json.loads(sign(body, ed))["alg"] == "Ed25519"
    assert sign(body, ed) == sign(body, ed)  # Ed25519 is deterministic
    path.write_bytes(ED25519_PUBLIC_PEM)
    public = load_key(f"ed25519:{path}", {}, "--key", private=False)
    assert public.keyid == ed.keyid
    with pytest.raises(Exception, match="not an unencrypted Ed25519 private key"):
        load_key(f"ed25519:{path}", {}, "--sign", private=True)
    with pytest.raises(Exception, match="shorter than 16"):
        load_key("hmac:K", {"K": "short"}, "--sign", private=True)


ED25519_PEM = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIIa/4bp8+9BVMT8NxuIy9qlHf2oqu0mH+c5Iw7LqUcwU
-----END PRIVATE KEY-----
"""
ED25519_PUBLIC_PEM = b"""-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEASrHflG3u4FlvDDeX52YQwZwS3VEZc0WtXSWuLDHAJPM=
-----END PUBLIC KEY-----
"""


def test_the_demo_writes_the_2022_statement_as_json_and_html(store: Store, tmp_path: Path) -> None:
    json_path, html_path, sha = write_demo_statement(
        str(store.path), DEMO_POLICY, ORG, tmp_path / "report"
    )
    body = json_path.read_bytes()
    assert hashlib.sha256(body).hexdigest() == sha
    assert json_path.name.endswith(f"-{sha[:12]}.json")
    assert sha in html_path.read_text()
    assert json.loads(body)["period"]["from"] == "2022-01-01T00:00:00Z"
    stored = get_statement(store.db, sha)
    assert stored is not None
    assert stored.body == body

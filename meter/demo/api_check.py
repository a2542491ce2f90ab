"""The demo's last check: the usage store, read through `meter api`, holds the ground truth's
totals of 2022 month by month for every app and organisation, and every alert."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from meter.sim.truth import Truth

YEAR = ("2022-01-01", "2023-01-01")
Key = tuple[str, str, str]  # subject type, subject, month ("2022-03")


def _month(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m")


def expected_months(truth: Truth) -> dict[Key, tuple[int, int]]:
    """Calls and records per subject and UTC month of 2022, from the truth's daily windows."""
    low = int(datetime.fromisoformat(YEAR[0] + "T00:00:00+00:00").timestamp() * 1000)
    high = int(datetime.fromisoformat(YEAR[1] + "T00:00:00+00:00").timestamp() * 1000)
    out: dict[Key, tuple[int, int]] = {}
    for w in truth.windows:
        if w.window != "1d" or not low <= w.start_ms < high:
            continue
        key = (w.subject_type, w.subject, _month(w.start_ms))
        calls, records = out.get(key, (0, 0))
        out[key] = (calls + w.calls, records + w.records)
    return out


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - our own API
        body: dict[str, Any] = json.loads(response.read())
        return body


def _pages(base: str, path: str, query: dict[str, str]) -> list[dict[str, Any]]:
    """Every row of a paged endpoint."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        q = dict(query, **({"cursor": cursor} if cursor else {}))
        body = _get(f"{base}{path}?{urllib.parse.urlencode(q)}")
        rows += body["data"]
        cursor = body.get("next_cursor")
        if not cursor:
            return rows


def api_months(base: str) -> dict[Key, tuple[int, int]]:
    out: dict[Key, tuple[int, int]] = {}
    for stype in ("app", "org"):
        query = {"subject_type": stype, "from": YEAR[0], "to": YEAR[1], "window": "month"}
        for row in _pages(base, "/v1/usage", query | {"limit": "5000"}):
            if row["calls"] or row["records"]:
                key = (stype, row["subject"], row["from"][:7])
                out[key] = (row["calls"], row["records"])
    return out


@dataclass
class ApiCheck:
    ok: bool
    rows: int
    subjects: int
    alerts: int
    detail: str


def check_api(base: str, truth: Truth, alerts: int, timeout_s: float) -> ApiCheck:
    """Wait (up to `timeout_s`, while the store catches up) until the API's months and alert
    count equal the truth's and what was published; then say what differs, if anything."""
    want = expected_months(truth)
    deadline = time.monotonic() + timeout_s
    while True:
        got = api_months(base)
        stored = len(_pages(base, "/v1/alerts", {"limit": "10000"}))
        if (got == want and stored == alerts) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    subjects = len({(t, s) for t, s, _ in want})
    if got == want and stored == alerts:
        return ApiCheck(True, len(want), subjects, stored, "")
    differ = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    shown = "; ".join(f"{k}: API {got.get(k)}, truth {want.get(k)}" for k in differ[:5])
    detail = f"{len(differ)} month(s) differ ({shown})" if differ else ""
    if stored != alerts:
        detail += f"{'; ' if detail else ''}{stored} alerts stored, {alerts} published"
    return ApiCheck(False, len(want), subjects, stored, detail)

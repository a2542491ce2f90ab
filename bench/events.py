"""A small, fast, deterministic generator of API-call events for the example policy's nine apps.

Event time starts at 2022-01-01T00:00:00Z and increases at the 2022 case's pace (about 25 calls
per second); calls retrieve about 33 records on average. The same seed gives the same events.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from typing import Any

Event = dict[str, Any]

START_MS = 1_640_995_200_000  # 2022-01-01T00:00:00Z
MEAN_GAP_MS = 40  # 25 events per second of event time, the 2022 case's average rate

# The apps of meter/examples/case-2022.yaml, their organisation and their share of the calls.
APPS: tuple[tuple[str, str, float], ...] = (
    ("xbox-one-social", "microsoft", 0.16),
    ("bing-pages", "microsoft", 0.14),
    ("bing-pages-2", "microsoft", 0.10),
    ("azure", "microsoft", 0.12),
    ("power-platform", "microsoft", 0.10),
    ("ads", "microsoft", 0.12),
    ("global-ads", "microsoft", 0.10),
    ("azure-logic-apps-fairfax", "microsoft", 0.08),
    ("research-pipeline", "openai", 0.08),
)
ORG_OF: dict[str, str] = {app: org for app, org, _ in APPS}
ENDPOINTS = (
    "/2/tweets/search/recent",
    "/2/tweets/search/all",
    "/2/tweets",
    "/2/users/by",
)


def _cumulative(weights: Sequence[float]) -> list[float]:
    total = sum(weights)
    out, acc = [], 0.0
    for w in weights:
        acc += w / total
        out.append(acc)
    out[-1] = 1.0
    return out


def generate(
    n: int, seed: int = 2022, *, start_ms: int = START_MS, mean_gap_ms: int = MEAN_GAP_MS
) -> Iterator[Event]:
    """`n` events with unique ids, non-decreasing epoch-ms times, ~33 records per call.

    About 3% of calls fail (429 or 500, no records); one in a thousand serves a government
    recipient (a restricted use for Microsoft's apps in the example policy).
    """
    rng = random.Random(seed)
    rand = rng.random
    apps = [a for a, _, _ in APPS]
    cum = _cumulative([w for _, _, w in APPS])
    t = start_ms
    gap = 2 * mean_gap_ms
    for i in range(n):
        t += int(rand() * (gap + 1))
        u = rand()
        k = 0
        while cum[k] < u:
            k += 1
        r = rand()
        if r < 0.02:
            status, records = 429, 0
        elif r < 0.03:
            status, records = 500, 0
        else:
            status, records = 200, int(rand() * 69)
        ev: Event = {
            "id": f"e{seed}-{i}",
            "time": t,
            "app_id": apps[k],
            "endpoint": ENDPOINTS[int(r * 1000) % len(ENDPOINTS)],
            "records": records,
            "status": status,
        }
        if r > 0.999:
            ev["recipient"] = "government"
        yield ev


def encode(event: Event) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def encode_batch(events: Sequence[Event]) -> bytes:
    """A batch record: a JSON array of events."""
    return json.dumps(list(events), separators=(",", ":")).encode()

"""Inputs with many subjects, for peers (g) and (h) of `python -m bench.run`.

(g) a platform's normal case: 10,000 organisations of 1 to 5 apps each (about 30,000 apps), every
    app on a tier with a 15-minute calls cap and every organisation with a daily records cap;
    traffic Zipf-distributed over the apps (a few apps make most of the calls).
(h) a stream in which every call comes from an app id never seen before and not in the policy
    (the example policy): each is counted and alerted on once a day as an unknown app.

Event time advances as in `bench.events` (25 calls per second of event time from 2022-01-01).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator
from pathlib import Path

from bench.events import ENDPOINTS, MEAN_GAP_MS, START_MS, Event

ORGS = 10_000
ZIPF_S = 1.1


def many_orgs(seed: int = 7, orgs: int = ORGS) -> list[tuple[str, str]]:
    """(app, org) for `orgs` organisations of 1 to 5 apps each."""
    rng = random.Random(seed)
    return [(f"app-{o}-{k}", f"org-{o}") for o in range(orgs) for k in range(rng.randint(1, 5))]


def write_policy(path: Path, apps: list[tuple[str, str]]) -> Path:
    lines = [
        "version: 1",
        "tiers:",
        "  std:",
        "    caps:",
        "      - {id: calls-15m, metric: calls, window: 15m, limit: 450}",
        "orgs:",
    ]
    for org in sorted({o for _, o in apps}, key=lambda o: int(o[4:])):
        lines.append(f"  {org}: {{caps: [{{id: records-1d, metric: records, window: 1d, "
                     f"limit: 2000000}}]}}")  # fmt: skip
    lines.append("apps:")
    lines += [f"  {app}: {{org: {org}, tier: std}}" for app, org in apps]
    path.write_text("\n".join(lines) + "\n")
    return path


def zipf_events(n: int, apps: list[tuple[str, str]], seed: int = 2022) -> Iterator[Event]:
    """`n` events over `apps`, app k (in a shuffled order) with weight 1/(k+1)^s."""
    rng = random.Random(seed)
    order = [a for a, _ in apps]
    rng.shuffle(order)
    cum, acc = [], 0.0
    for k in range(len(order)):
        acc += 1.0 / (k + 1) ** ZIPF_S
        cum.append(acc)
    t = START_MS
    for i in range(n):
        t += int(rng.random() * (2 * MEAN_GAP_MS + 1))
        app = order[bisect.bisect_left(cum, rng.random() * acc)]
        yield {"id": f"g{seed}-{i}", "time": t, "app_id": app,
               "endpoint": ENDPOINTS[i % len(ENDPOINTS)], "records": int(rng.random() * 69),
               "status": 200}  # fmt: skip


def unknown_events(n: int, seed: int = 2022) -> Iterator[Event]:
    """`n` events, each from an app id of its own that no policy knows."""
    rng = random.Random(seed)
    t = START_MS
    for i in range(n):
        t += int(rng.random() * (2 * MEAN_GAP_MS + 1))
        yield {"id": f"h{seed}-{i}", "time": t, "app_id": f"stranger-{seed}-{i}",
               "endpoint": ENDPOINTS[i % len(ENDPOINTS)], "records": 1, "status": 200}  # fmt: skip

"""The worker's web port serves `/metrics` and its health checks, and nothing else: faust's own
pages (raw table state, the partition map, internals) are gone."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from tests.harness.data import event, ms
from tests.harness.deployment import Deployment
from tests.harness.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

POLICY = """\
version: 1
tiers:
  std:
    caps:
      - {id: calls-1h, metric: calls, window: 1h, limit: 100}
orgs:
  acme: {}
apps:
  acme-web: {org: acme, tier: std}
"""

# faust's default and debug pages, with the paths that would show this worker's ledger
FAUST_PAGES = [
    "/table/",
    "/table/ledger/",
    "/table/ledger/w%7C0/",
    "/router/",
    "/router/ledger/",
    "/graph/",
    "/stats/",
    "/performance/",
    "/signal/",
]


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except urllib.error.URLError:
        return 0, b""  # not listening yet


def test_only_metrics_and_health_checks_are_served(
    deployments: Callable[..., Deployment],
) -> None:
    d = deployments(POLICY, partitions=2)
    worker = d.start_worker()
    status, body = wait_until(
        lambda: (r := get(worker.web_port, "/readyz"))[0] == 200 and r,
        120,
        what="worker ready",
        abort=d.died,
    )
    assert json.loads(body) == {"status": "ready", "waiting_for": []}
    d.send_events([event("e1", ms("2022-03-01T10:00"), "acme-web")])
    wait_until(lambda: d.metric(worker, "meter_events_total") == 1, 60, what="counted")

    assert get(worker.web_port, "/healthz") == (200, b'{"status": "ok"}')
    # a restricted scrape: only the series asked for
    status, body = get(worker.web_port, "/metrics?name[]=meter_events_total")
    assert status == 200
    assert b"meter_events_total 1.0" in body
    assert b"meter_input_records_total" not in body
    assert b"meter_cap_usage" not in body
    for path in FAUST_PAGES:
        status, body = get(worker.web_port, path)
        assert status == 404, (path, status, body[:300])
        assert b"acme" not in body, path
    worker.stop()

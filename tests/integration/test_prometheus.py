"""A real Prometheus scraping a real worker: exact counts through the query API, the shipped rules
load and evaluate without errors, and the cap alerts fire for the app pushed over its cap."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from meter.adapters.broker import free_port
from tests.harness.data import dumps
from tests.harness.deployment import Deployment, write_policy
from tests.harness.processes import WorkerProcess, wait_until
from tests.harness.promql import exported_series

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
PROMETHEUS_BIN = Path("/usr/bin/prometheus")

POLICY = """\
version: 1
tiers:
  standard:
    caps:
      - {id: calls-1d, metric: calls, window: 1d, limit: 10}
orgs:
  acme:
    caps:
      - {id: calls-1d, metric: calls, window: 1d, limit: 1000}
  globex:
    caps:
      - {id: records-1d, metric: records, window: 1d, limit: 100}
apps:
  acme-web: {org: acme, tier: standard}
  globex-api: {org: globex, tier: standard}
"""

ACME_CALLS, ACME_RECORDS_EACH = 12, 5  # 12 calls against a 10-call app cap: 120%
GLOBEX_CALLS, GLOBEX_RECORDS_EACH = 5, 7  # 35 records against a 100-record org cap
DUPLICATES = 4
MALFORMED = [b"", b"not json", b'{"id": "m1", "app_id": "acme-web"}']
REASONS = {"empty", "not_json", "missing_field"}


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def worker_samples(worker: WorkerProcess) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """The worker's own /metrics page: series name -> labels -> value."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5
        ) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


class Prometheus:
    """A Prometheus server on a free loopback port, scraping the worker every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
        config.pop("alerting")
        jobs = [job for job in config["scrape_configs"] if job["job_name"] == "meter"]
        jobs[0]["static_configs"] = [{"targets": [target]}]
        config["scrape_configs"] = jobs
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                str(PROMETHEUS_BIN),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def died(self) -> bool:
        return self.proc.poll() is not None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def query(self, promql: str) -> dict[frozenset[tuple[str, str]], float]:
        """An instant query: labels (without __name__) -> value."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        body = http_json(url)
        assert body["status"] == "success", body
        return {
            frozenset((k, v) for k, v in r["metric"].items() if k != "__name__"): float(
                r["value"][1]
            )
            for r in body["data"]["result"]
        }

    def values(self, promql: str, label: str) -> dict[str, float]:
        return {dict(k).get(label, ""): v for k, v in self.query(promql).items()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def deployment(
    kafka_bootstrap: str, unique: Callable[[str], str], tmp_path: Path
) -> Iterator[Deployment]:
    policy = write_policy(tmp_path / "policy.yaml", POLICY)
    dep = Deployment(kafka_bootstrap, tmp_path, unique, policy)
    try:
        yield dep
    finally:
        dep.close()


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    if not PROMETHEUS_BIN.exists():
        pytest.fail(f"{PROMETHEUS_BIN} not found: install the Debian package `prometheus`")
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        workdir = tmp_path / "prometheus"
        workdir.mkdir()
        server = Prometheus(workdir, target)
        started.append(server)
        wait_until(server.ready, 60, what="Prometheus ready", abort=server.died)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def send_stream(dep: Deployment) -> None:
    """Acme: 12 calls of 5 records, 4 of them sent twice; globex: one batch of 5 calls of
    7 records; 3 malformed records. All at one event time, in one open 1-day window."""
    t0 = int(time.time() * 1000) - 1000
    acme = [
        {"id": f"a{i}", "time": t0, "app_id": "acme-web", "records": ACME_RECORDS_EACH}
        for i in range(ACME_CALLS)
    ]
    globex = [
        {"id": f"g{i}", "time": t0, "app_id": "globex-api", "records": GLOBEX_RECORDS_EACH}
        for i in range(GLOBEX_CALLS)
    ]
    values = [dumps(e) for e in acme] + [dumps(globex)] + [dumps(e) for e in acme[:DUPLICATES]]
    dep.send(values + MALFORMED)


def counted(dep: Deployment, worker: WorkerProcess) -> bool:
    samples = worker_samples(worker)
    events = samples.get("meter_events_total", {}).get(frozenset())
    duplicates = samples.get("meter_duplicate_events_total", {}).get(frozenset())
    dead = sum(samples.get("meter_dead_letter_events_total", {}).values())
    alerts = sum(samples.get("meter_alerts_total", {}).values())
    return (
        events == ACME_CALLS + GLOBEX_CALLS
        and duplicates == DUPLICATES
        and dead == len(MALFORMED)
        and alerts == 2  # acme-web: warning at 80%, critical at 100%
    )


def test_prometheus_scrapes_exact_counts_and_fires_the_cap_alert(
    deployment: Deployment, start_prometheus: Callable[[str], Prometheus]
) -> None:
    worker = deployment.start_worker()
    send_stream(deployment)
    wait_until(
        lambda: counted(deployment, worker),
        180,
        interval=0.5,
        what="the worker to count the stream",
        abort=deployment.died,
    )
    scraped = set(worker_samples(worker))
    assert scraped <= set(exported_series()), "the deploy tests' metric catalogue is incomplete"

    prom = start_prometheus(f"127.0.0.1:{worker.web_port}")
    try:
        wait_until(
            lambda: prom.query('up{job="meter"} == 1') and prom.query("meter_events_total"),
            60,
            what="a scrape of the worker",
            abort=prom.died,
        )
        # Policy organisations and "other" exist from the start, at zero until counted.
        assert prom.values("meter_calls_total", "org") == {"acme": 12, "globex": 5, "other": 0}
        assert prom.values("meter_records_total", "org") == {"acme": 60, "globex": 35, "other": 0}
        assert prom.values("meter_events_total", "job") == {"meter": 17}
        assert prom.values("meter_duplicate_events_total", "job") == {"meter": DUPLICATES}
        assert prom.values("sum(meter_dead_letter_events_total)", "") == {"": 3}
        assert prom.values("meter_dead_letter_events_total > 0", "reason") == dict.fromkeys(
            REASONS, 1
        )
        assert prom.values('meter_alerts_total{kind="cap"}', "severity") == {
            "warning": 1,
            "critical": 1,
        }
        app = '{subject_type="app",subject="acme-web",cap="tier:standard:calls-1d",window="1d"}'
        assert prom.values(f"meter_cap_usage{app}", "metric") == {"calls": 12}
        assert prom.values(f"meter_cap_limit{app}", "metric") == {"calls": 10}
        assert prom.values(f"meter_cap_utilization_ratio{app}", "metric") == {"calls": 1.2}
        org = '{subject_type="org",subject="globex",cap="org:globex:records-1d"}'
        assert prom.values(f"meter_cap_usage{org}", "metric") == {"records": 35}

        wait_until(lambda: rules_evaluated(prom), 60, what="every rule evaluated", abort=prom.died)
        # A rate needs two scrapes; the recorded series then exist for both organisations.
        wait_until(
            lambda: {"acme", "globex"} <= set(prom.values("org:meter_calls:rate5m", "org")),
            30,
            what="the recording rules",
            abort=prom.died,
        )
        firing = wait_until(
            lambda: firing_alerts(prom, {"MeterCapExceeded", "MeterCapUsageHigh"}),
            60,
            what="the cap alerts to fire",
            abort=prom.died,
        )
        cap_alerts = {(a["alertname"], a["subject"], a["cap"]) for a in firing if "cap" in a}
        assert cap_alerts == {
            ("MeterCapExceeded", "acme-web", "tier:standard:calls-1d"),
            ("MeterCapUsageHigh", "acme-web", "tier:standard:calls-1d"),
        }
        names = {a["alertname"] for a in firing}
        assert "MeterDeadLetters" in names  # new reason series: fires on the first scrape
        assert not names & {"MeterWorkerDown", "MeterNoWorkers", "MeterOutboxNotDraining"}
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- prometheus log ---\n{prom.log_tail()}") from exc


def rules_evaluated(prom: Prometheus) -> bool:
    """Every rule of the shipped files is loaded, has been evaluated and reports no error."""
    groups = http_json(f"{prom.url}/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    shipped = [
        rule.get("alert") or rule.get("record")
        for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]
    assert sorted(r["name"] for r in rules) == sorted(shipped)
    errors = [(r["name"], r.get("lastError")) for r in rules if r["health"] == "err"]
    assert errors == [], errors
    return all(r["health"] == "ok" for r in rules)


def firing_alerts(prom: Prometheus, wanted: set[str]) -> list[dict[str, str]]:
    alerts = http_json(f"{prom.url}/api/v1/alerts")["data"]["alerts"]
    firing = [a["labels"] for a in alerts if a["state"] == "firing"]
    return firing if wanted <= {a["alertname"] for a in firing} else []

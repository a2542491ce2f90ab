"""Usage statements end to end: the 2022 case through a real worker and `meter store` (SQLite),
then `meter report` and `meter api` on that store. Totals equal the simulator's ground truth,
the same cut gives the same bytes in every format (in fresh processes), `verify` catches a
changed number, and an organisation's token cannot read or issue another's statements."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from kafka import KafkaConsumer, TopicPartition

from meter.adapters.api.auth import digest
from meter.adapters.broker import free_port
from meter.core.durations import DAY_MS
from meter.sim.command import add_simulate_parser
from meter.sim.truth import Truth, load_truth
from tests.harness.browser import dump_dom, parse, screenshot
from tests.harness.data import ms
from tests.harness.deployment import Deployment, deployment_factory
from tests.harness.http import Reply, get
from tests.harness.processes import REPO, WorkerProcess, wait_until
from tests.harness.statements import DEMO_POLICY, YEAR_2022

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

HMAC_KEY = "integration-test-statement-key"
CLOSE_AT = "2023-03-01T00:00"
"""Every input partition is pushed here: 2022's windows are past every horizon (final)."""
REPORT_ARTIFACT = REPO / "var" / "artifacts" / "statement-2022.png"


@dataclass
class Stack:
    d: Deployment
    api: WorkerProcess
    database: Path
    truth: Truth
    tokens: dict[str, str]

    def get(self, path: str, who: str = "admin", **kw: Any) -> Reply:
        return get(self.api.web_port, path, token=self.tokens[who], **kw)

    def post(self, path: str, body: dict[str, Any], who: str = "admin") -> Reply:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api.web_port}{path}",
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self.tokens[who]}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return Reply(response.status, response.headers, response.read())
        except urllib.error.HTTPError as e:
            return Reply(e.code, e.headers, e.read())


def simulate(bootstrap: str, topic: str, truth: Path) -> Truth:
    parser = argparse.ArgumentParser(prog="meter")
    add_simulate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "simulate",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--truth",
            str(truth),
            "--policy",
            str(DEMO_POLICY),
            "--calls",
            "3000",
            "--seed",
            "13",
            "--late",
            "0.01",
            "--restricted",
            "0.01",
            "--unknown",
            "0.005",
            "--batch-size",
            "50",
        ]
    )
    assert args.handler(args, {}) == 0
    return load_truth(truth)


def stored_everything(d: Deployment, database: Path) -> bool:
    """The store's offsets have reached the end of the windows and alerts topics."""
    consumer = KafkaConsumer(bootstrap_servers=d.bootstrap, enable_auto_commit=False)
    try:
        parts = [
            TopicPartition(t, p)
            for t in (d.windows_topic, d.alerts_topic)
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        ends = {(tp.topic, tp.partition): o for tp, o in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT topic, partition, next_offset FROM consumer_offset")
            stored = {(t, p): o for t, p, o in rows}
    except sqlite3.OperationalError:  # not created, or not migrated yet
        return False
    return all(stored.get(k, 0) >= end for k, end in ends.items())


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("report")
    suffix = uuid.uuid4().hex[:8]
    tokens = {who: f"mtr_{who}_{suffix}" for who in ("admin", "microsoft", "openai")}
    tokens_file = tmp / "tokens.yaml"
    tokens_file.write_text(
        "tokens:\n"
        + "".join(
            f'  - {{name: {who}, scope: "{"admin" if who == "admin" else "org:" + who}", '
            f"sha256: {digest(t)}}}\n"
            for who, t in tokens.items()
        )
    )
    with deployment_factory(kafka_bootstrap, tmp, lambda b: f"{b}-{suffix}") as make:
        d = make(DEMO_POLICY.read_text(), partitions=2)
        d.start_worker()
        database = tmp / "meter.db"
        truth = simulate(kafka_bootstrap, d.input_topic, tmp / "truth.json")
        d.wait_consumed()
        # two pushes: the windows of the first close and reach the store (the event time a
        # store has seen is the latest window it holds)
        d.push(ms(CLOSE_AT), ["azure"])
        d.wait_consumed()
        d.push(ms(CLOSE_AT) + DAY_MS + 60_000, ["azure"])
        d.wait_settled(timeout=240, watermark_ms=ms(CLOSE_AT) + DAY_MS + 60_000)
        # the store and the API after wait_settled, which reads every process's /metrics
        d.start_store(str(database))
        port = free_port()
        api = WorkerProcess(
            [
                "api",
                "--policy",
                str(d.policy),
                "--bootstrap",
                d.bootstrap,
                "--quota-topic",
                d.quota_topic,
                "--database",
                str(database),
                "--port",
                str(port),
                "--tokens-file",
                str(tokens_file),
                "--statement-key",
                "hmac:REPORT_TEST_KEY",
            ],
            tmp / "api.log",
            port,
            tmp / "api",
            env={"REPORT_TEST_KEY": HMAC_KEY},
        )
        d.workers.append(api)
        wait_until(
            lambda: stored_everything(d, database), 240, what="the store to catch up", abort=d.died
        )
        yield Stack(d, api, database, truth, tokens)


def meter(*args: str, seed: str = "0") -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    env |= {"PYTHONHASHSEED": seed, "METER_POLICY": str(DEMO_POLICY), "REPORT_TEST_KEY": HMAC_KEY}
    return subprocess.run(
        [sys.executable, "-m", "meter.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )


def report(s: Stack, out: Path, *extra: str, seed: str = "0") -> dict[str, Path]:
    """`meter report` for microsoft's 2022 into `out`: what it wrote, by kind."""
    result = meter(
        "report",
        "--org",
        "microsoft",
        "--from",
        "2022-01-01",
        "--to",
        "2023-01-01",
        "--database",
        str(s.database),
        "--format",
        "json,html,csv,table",
        "--out",
        str(out),
        *extra,
        seed=seed,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    lines = result.stdout.decode().splitlines()
    written = {}
    for line in lines[2:]:
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("json", "html", "csv", "table", "signature"):
            written[parts[0]] = Path(parts[1])
    written["as_of"] = Path(lines[-1].split()[1])  # "--as-of T gives these bytes again"
    return written


def truth_year(s: Stack, subject_type: str) -> dict[str, list[int]]:
    low, high = YEAR_2022
    out: dict[str, list[int]] = {}
    for w in s.truth.windows:
        if w.window == "1d" and w.subject_type == subject_type and low <= w.start_ms < high:
            cell = out.setdefault(w.subject, [0, 0])
            cell[0] += w.calls
            cell[1] += w.records
    return out


def files_of(written: dict[str, Path]) -> dict[str, bytes]:
    out = {kind: written[kind].read_bytes() for kind in ("json", "html", "table")}
    out |= {f"csv/{p.name}": p.read_bytes() for p in sorted(written["csv"].iterdir())}
    return out


def test_report_totals_equal_the_truth_and_rerun_to_the_same_bytes(
    stack: Stack, tmp_path: Path
) -> None:
    s = stack
    first = report(s, tmp_path / "a", seed="1")
    doc = json.loads(first["json"].read_bytes())
    assert doc["status"] == "final"
    org = truth_year(s, "org")["microsoft"]
    assert [doc["totals"]["calls"], doc["totals"]["records"]] == org
    apps = truth_year(s, "app")
    assert {r["app"]: [r["calls"], r["records"]] for r in doc["by_app"]} == {
        r["app"]: apps[r["app"]] for r in doc["by_app"]
    }
    assert sum(r["calls"] for r in doc["by_app"]) == org[0]
    assert sum(m["records"] for m in doc["by_month"]) == org[1]
    # again, in a fresh process with another hash seed, as of the cut the first one printed
    again = report(s, tmp_path / "b", "--as-of", str(first["as_of"]), seed="2")
    assert files_of(again) == files_of(first)
    assert {k: v.name for k, v in again.items()} == {k: v.name for k, v in first.items()}
    table = meter(
        "report",
        "--org",
        "microsoft",
        "--from",
        "2022-01-01",
        "--to",
        "2023-01-01",
        "--database",
        str(s.database),
        "--as-of",
        str(first["as_of"]),
        seed="3",
    )
    assert table.stdout == first["table"].read_bytes()


def test_verify_passes_the_statement_and_catches_a_changed_number(
    stack: Stack, tmp_path: Path
) -> None:
    s = stack
    written = report(s, tmp_path, "--sign", "hmac:REPORT_TEST_KEY")
    path = written["json"]
    assert written["signature"].name == path.name.replace(".json", ".sig.json")
    ok = meter(
        "report",
        "verify",
        str(path),
        "--key",
        "hmac:REPORT_TEST_KEY",
        "--database",
        str(s.database),
    )
    assert ok.returncode == 0, ok.stdout.decode()
    assert "identical, byte for byte" in ok.stdout.decode()
    doc = json.loads(path.read_bytes())
    doc["by_month"][4]["calls"] += 1
    path.write_bytes(rfc8785.dumps(doc))
    bad = meter(
        "report",
        "verify",
        str(path),
        "--key",
        "hmac:REPORT_TEST_KEY",
        "--database",
        str(s.database),
    )
    text = bad.stdout.decode()
    assert bad.returncode == 1, text
    assert "FAIL  signature: it signs statement" in text
    assert "first in section by_month[2022-05].calls: file " in text


def test_the_api_issues_and_serves_statements_to_their_own_organisation_only(
    stack: Stack,
) -> None:
    s = stack
    year = {"from": "2022-01-01", "to": "2023-01-01"}
    created = s.post("/v1/statements", {"org_id": "microsoft", **year})
    assert created.status in (200, 201), created.body
    doc = created.json()
    sid = created.headers["Location"].rsplit("/", 1)[1]
    assert doc["totals"]["calls"] == truth_year(s, "org")["microsoft"][0]
    # the same cut again: the same statement, already recorded
    again = s.post("/v1/statements", {"org_id": "microsoft", **year, "as_of": doc["as_of"]})
    assert (again.status, again.body) == (200, created.body)
    assert s.get(f"/v1/statements/{sid}").body == created.body
    html = s.get(f"/v1/statements/{sid}?format=html")
    assert (html.status, html.content_type) == (200, "text/html")
    assert sid in html.body.decode()
    table = s.get(f"/v1/statements/{sid}?format=table")
    assert table.content_type == "text/plain"
    archive = zipfile.ZipFile(BytesIO(s.get(f"/v1/statements/{sid}?format=csv").body))
    assert any(n.endswith("/manifest.json") for n in archive.namelist())
    by_app = s.get(f"/v1/statements/{sid}?format=csv&section=by_app")
    assert by_app.body.decode().startswith("app,name,in_policy,calls,records\n")
    sig = s.get(f"/v1/statements/{sid}?format=sig").json()
    assert (sig["alg"], sig["statement"]) == ("HS256", sid)
    # microsoft's token: its own statements only; openai's: nothing of microsoft's
    assert s.get(f"/v1/statements/{sid}", "microsoft").body == created.body
    assert s.post("/v1/statements", {"org_id": "microsoft", **year}, "microsoft").status == 200
    for path in (
        f"/v1/statements/{sid}",
        f"/v1/statements/{sid}?format=html",
        f"/v1/statements/{sid}?format=sig",
        "/v1/statements?org_id=microsoft",
    ):
        hidden = s.get(path, "openai")
        assert hidden.status == 404, path
        assert hidden.content_type == "application/problem+json"
    denied = s.post("/v1/statements", {"org_id": "microsoft", **year}, "openai")
    assert denied.status == 404
    assert denied.json()["detail"] == "no org 'microsoft'"
    own = s.post("/v1/statements", {"org_id": "openai", **year}, "openai")
    assert own.status in (200, 201)
    listed = s.get("/v1/statements", "openai").json()["data"]
    assert listed
    assert {r["org_id"] for r in listed} == {"openai"}
    assert {r["org_id"] for r in s.get("/v1/statements").json()["data"]} == {"microsoft", "openai"}
    bad = s.post(
        "/v1/statements", {"org_id": "microsoft", "from": "2022-01-01", "to": "2021-01-01"}
    )
    assert (bad.status, bad.json()["invalid-params"][0]["name"]) == (400, "to")


def test_a_person_sees_the_html_statement_in_a_browser(stack: Stack, tmp_path: Path) -> None:
    """The HTML statement opened in headless Chromium from a file, with the network cut off: what
    is visible is the period, the totals, the charts and how to verify it. The screenshot is kept
    as an artifact for a person to look at (var/artifacts/statement-2022.png)."""
    written = report(stack, tmp_path / "out")
    doc = json.loads(written["json"].read_bytes())
    sid = written["json"].stem.rsplit("-", 1)[-1]
    url = written["html"].resolve().as_uri()
    page = parse(dump_dom(url, tmp_path / "chromium"))
    text = " ".join(page.text().split())
    assert "Microsoft" in text
    assert f"{doc['totals']['calls']:,}" in text
    assert f"{doc['totals']['records']:,}" in text
    assert "meter report verify" in text
    assert sid in text  # the id's first digits at least, as in the file name
    assert sum(node.tag == "svg" for node in page.walk()) == 4  # the charts are drawn
    assert "Top endpoints" in text
    shot = screenshot(url, tmp_path / "statement.png", tmp_path / "chromium", size=(1280, 2400))
    REPORT_ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, REPORT_ARTIFACT)

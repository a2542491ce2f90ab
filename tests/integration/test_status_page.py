"""The status page (`GET /` of `meter api`) in Debian's headless Chromium, against a real broker,
worker, store and API: what a person sees while the worker counts, with and without tokens.

One stack for the module, with two APIs on the same feed and store: one open, one with a tokens
file. The caps' windows are 3650 days long (2019-12-20 to 2029-12-17), so no cap the tests read
resets while they run. Each test sends calls of its own apps (acme-3's carry no records, so
acme's records cap only counts the first test's), so either can run alone. Screenshots are kept
in each test's tmp dir and the first one in var/artifacts/status-page.png.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meter.adapters.broker import free_port
from tests.harness.browser import DevTools, Node, dump_dom, parse, screenshot
from tests.harness.data import event
from tests.harness.deployment import Deployment, deployment_factory
from tests.harness.http import get, write_tokens
from tests.harness.processes import REPO, WorkerProcess, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ARTIFACT = REPO / "var" / "artifacts" / "status-page.png"
POLICY = """
version: 1
tiers:
  std:
    caps:
      - {id: calls-10y, metric: calls, window: 3650d, limit: 10}
      - {id: calls-soft, metric: calls, window: 3650d, limit: 5, enforcement: soft}
      - {id: calls-1h, metric: calls, window: 1h, limit: 1000}
orgs:
  acme:
    caps:
      - {id: records-10y, metric: records, window: 3650d, limit: 100}
  globex: {}
apps:
  acme-1: {org: acme, tier: std}
  acme-2: {org: acme, tier: std}
  acme-3: {org: acme, tier: std}
  globex-1: {org: globex, tier: std}
"""


@dataclass
class Stack:
    d: Deployment
    api: WorkerProcess
    secured: WorkerProcess
    admin: str
    acme: str
    calls: Counter[str] = field(default_factory=Counter)

    def send(self, app: str, n: int, records: int = 0) -> None:
        """`n` calls of `app`, now (each with `records` records)."""
        now = int(time.time() * 1000)
        self.d.send_events([
            event(f"{app}-{uuid.uuid4().hex[:12]}", now, app, records=records) for _ in range(n)
        ])  # fmt: skip
        self.calls[app] += n

    def url(self, api: WorkerProcess) -> str:
        return f"http://127.0.0.1:{api.web_port}/"


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("status")
    suffix = uuid.uuid4().hex[:8]
    tokens = tmp / "tokens.yaml"
    admin, acme = write_tokens(tokens, suffix)
    with deployment_factory(kafka_bootstrap, tmp, lambda b: f"{b}-{suffix}") as make:
        d = make(POLICY, partitions=2)
        d.start_worker()
        database = str(tmp / "meter.db")
        d.start_store(database)
        api = d.start_api(database)
        secured = d.start_api(database, tokens, label="api-tokens")
        for a in (api, secured):
            wait_until(lambda a=a: get(a.web_port, "/readyz").status == 200, 120,
                       what="api ready", abort=d.died)  # fmt: skip
        yield Stack(d, api, secured, admin, acme)


def cap_row(page: Node, subject: str, cap: str) -> Node:
    box = page.one("data-subject", subject)
    return box.one("data-cap", cap)


def look(s: Stack, profile: Path, ready: Callable[[Node], bool]) -> Node:
    """Load the page in a fresh Chromium until `ready(page)` holds; the page as dumped."""
    seen: list[Node] = []

    def loaded() -> bool:
        page = parse(dump_dom(s.url(s.api), profile))
        seen[:] = [page]
        try:
            return bool(ready(page))
        except AssertionError:  # an element not drawn yet
            return False

    try:
        wait_until(loaded, 120, interval=0.5, what="the page to show it", abort=s.d.died)
    except AssertionError:
        text = seen[0].text() if seen else "(nothing)"
        raise AssertionError(f"the page never showed it; last seen: {text[:3000]}") from None
    return seen[0]


def test_a_person_sees_orgs_apps_caps_by_state_and_the_latest_alerts(
    stack: Stack, tmp_path: Path
) -> None:
    s = stack
    s.send("acme-1", 12, records=5)  # calls-10y 12/10: exceeded; acme's records 60
    s.send("acme-2", 3, records=10)  # 3/10: ok; acme's records 90/100: warning
    s.send("globex-1", 4)  # its soft cap 4/5: warning
    page = look(s, tmp_path / "chromium", lambda p: (
        "12 / 10 calls" in cap_row(p, "app:acme-1", "tier:std:calls-10y").text()
        and "90 / 100 records" in cap_row(p, "org:acme", "org:acme:records-10y").text()
        and "4 / 5 calls" in cap_row(p, "app:globex-1", "tier:std:calls-soft").text()
        and "app acme-1 reached 100% of tier:std:calls-10y" in p.one("id", "alerts").text()
    ))  # fmt: skip
    shot = screenshot(s.url(s.api), tmp_path / "status-page.png", tmp_path / "chromium",
                      size=(1280, 1050))  # fmt: skip
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)

    assert page.one("data-ready", "true").tag == "body"
    # organisations in order, each with its own apps
    assert [o.attrs["data-org"] for o in page.all("data-org")] == ["acme", "globex"]
    acme = page.one("data-org", "acme")
    assert [b.attrs["data-subject"] for b in acme.all("data-subject")] == [
        "org:acme", "app:acme-1", "app:acme-2", "app:acme-3",
    ]  # fmt: skip
    assert acme.text().startswith("acme 3 apps exceeded")
    # an app over its cap shows as exceeded, with its numbers and when the cap resets
    app1 = page.one("data-subject", "app:acme-1")
    assert app1.text().startswith("acme-1 app exceeded")
    row = cap_row(page, "app:acme-1", "tier:std:calls-10y")
    assert row.attrs["data-state"] == "exceeded"
    assert "calls-10y calls per 3650d 12 / 10 calls · 120% · exceeded resets in" in row.text()
    assert row.text().endswith("· 2029-12-17 00:00 UTC")
    assert page.one("data-subject", "app:acme-2").text().startswith("acme-2 app ok")
    org_records = cap_row(page, "org:acme", "org:acme:records-10y")
    assert org_records.attrs["data-state"] == "warning"
    assert "90 / 100 records · 90% · warning" in org_records.text()
    # a soft cap is marked as one
    soft = cap_row(page, "app:globex-1", "tier:std:calls-soft")
    assert soft.text().startswith("calls-soft soft calls per 3650d 4 / 5 calls · 80% · warning")
    assert page.one("data-subject", "app:globex-1").text().startswith("globex-1 app warning")
    # globex has no caps of its own: no box for them
    assert page.all("data-subject", "org:globex") == []
    # the summary, the alerts and how fresh the data is
    summary = page.one("id", "summary").text()
    assert summary.startswith("2 organisations · 4 apps:")
    assert "exceeded" in summary
    alerts = page.one("id", "alerts")
    items = [li.text() for li in alerts.all("data-alert")]
    assert any(t.startswith("critical app acme-1 reached 100% of tier:std:calls-10y 10 / 10 calls")
               for t in items), items  # fmt: skip
    assert any(t.startswith("warning org acme reached 80% of org:acme:records-10y") for t in items)
    freshness = page.one("id", "freshness")
    assert freshness.text().startswith("data as of ")
    assert freshness.attrs["data-reachable"] == "true"

    # more calls: the numbers move, acme's records cross its cap and alert
    s.send("acme-1", 5, records=5)  # 17/10; acme's records 115/100
    s.send("acme-2", 4, records=10)  # 7/10; acme's records 155/100
    page = look(s, tmp_path / "chromium", lambda p: (
        "17 / 10 calls · 170%" in cap_row(p, "app:acme-1", "tier:std:calls-10y").text()
        and "7 / 10 calls · 70%" in cap_row(p, "app:acme-2", "tier:std:calls-10y").text()
        and "155 / 100 records · 155% · exceeded" in cap_row(
            p, "org:acme", "org:acme:records-10y").text()
        and "org acme reached 100% of org:acme:records-10y" in p.one("id", "alerts").text()
    ))  # fmt: skip
    assert cap_row(page, "org:acme", "org:acme:records-10y").attrs["data-state"] == "exceeded"
    # acme-2 is over its soft cap only: exceeded, but its calls are not denied
    assert page.one("data-subject", "app:acme-2").text().startswith("acme-2 app exceeded (soft)")
    assert page.one("data-subject", "app:acme-1").text().startswith("acme-1 app exceeded calls-10y")
    screenshot(s.url(s.api), tmp_path / "status-page-after.png", tmp_path / "chromium",
               size=(1280, 1050))  # fmt: skip


def wait_page(b: DevTools, condition: str, what: str, timeout: float = 60) -> None:
    """Until the JavaScript `condition` holds in the page (a person would see it)."""
    try:
        wait_until(lambda: b.evaluate(f"!!({condition})"), timeout, interval=0.25, what=what)
    except AssertionError:
        raise AssertionError(f"{what}; the page shows: {b.text('body')[:3000]}") from None


def type_token(b: DevTools, token: str) -> None:
    b.evaluate("document.getElementById('token').focus()")
    b.call("Input.insertText", text=token)
    b.evaluate("document.querySelector('#token-form button').click()")


def test_with_tokens_the_page_asks_for_one_and_shows_what_it_may_see(
    stack: Stack, tmp_path: Path
) -> None:
    s = stack
    page = get(s.secured.web_port, "/")  # the page is public: it holds no data
    assert page.status == 200
    assert b"acme" not in page.body
    b = DevTools(tmp_path / "chromium")
    try:
        b.open(s.url(s.secured))
        wait_page(b, "document.body.dataset.auth === 'required'", "the token prompt")
        assert b.text("#notice").startswith("This API needs a token")
        assert b.text("#usage") == ""  # nothing shown, nothing fetched without a token
        assert b.evaluate("document.querySelectorAll('[data-subject]').length") == 0
        b.screenshot(tmp_path / "status-page-token.png")

        type_token(b, "mtr_not_a_token")
        wait_page(b, "document.getElementById('notice-title').textContent.includes('not accepted')",
                  "the wrong token refused")  # fmt: skip
        assert b.evaluate("sessionStorage.length") == 0

        # acme's token: acme's apps, nothing of globex
        s.send("acme-3", 2)
        type_token(b, s.acme)
        cap = "[data-subject='app:acme-3'] [data-cap='tier:std:calls-10y']"
        used = f'(document.querySelector("{cap}") || {{dataset: {{}}}}).dataset.used'
        wait_page(b, f"{used} === '{s.calls['acme-3']}'", "acme-3's calls")
        assert b.text("#orgs").startswith("acme 3 apps")
        assert "globex" not in b.text("body")
        assert b.evaluate("sessionStorage.getItem('meter.token')") == s.acme
        assert s.acme not in b.evaluate("location.href + document.cookie")
        assert b.text("#forget") == "Forget token"

        # the same page, not reloaded, follows the worker's counting
        b.evaluate("window.notReloaded = true")
        before = s.calls["acme-3"]
        s.send("acme-3", 3)
        wait_page(b, f"{used} === '{before + 3}'", "the numbers to move")
        assert b.evaluate("window.notReloaded") is True
        assert f"{before + 3} / 10 calls" in b.text(cap)
        b.screenshot(tmp_path / "status-page-org-token.png")

        # a reload keeps the token (this tab's session storage); "Forget token" drops it
        b.open(s.url(s.secured))
        wait_page(b, "document.body.dataset.ready === 'true'", "signed in after a reload")
        b.evaluate("document.getElementById('forget').click()")
        wait_page(b, "document.body.dataset.auth === 'required'", "the prompt again")
        assert b.evaluate("sessionStorage.length") == 0
        assert b.evaluate("document.querySelectorAll('[data-subject]').length") == 0

        # when the API stops answering, the page says so and its data turns stale
        type_token(b, s.admin)
        wait_page(b, "document.body.dataset.ready === 'true'", "signed in as admin")
        assert "globex" in b.text("#orgs")
        fresh = b.text("#freshness")
        assert fresh.startswith("data as of "), fresh
        b.call("Network.enable")
        b.call("Network.emulateNetworkConditions", offline=True, latency=0,
               downloadThroughput=-1, uploadThroughput=-1)  # fmt: skip
        b.call("Emulation.setVirtualTimePolicy", policy="advance", budget=60_000)
        b.wait_event("Emulation.virtualTimeBudgetExpired")
        stale = b.text("#freshness")
        assert stale.startswith("cannot reach the API · data as of "), stale
        assert stale.endswith(" ago · stale"), stale
        assert b.evaluate("document.getElementById('freshness').dataset.stale") == "true"
        assert b.text("#notice").startswith("Cannot update The API does not answer")
        assert b.evaluate("document.querySelectorAll('[data-subject]').length") > 0  # still shown
        b.screenshot(tmp_path / "status-page-stale.png")
    finally:
        b.close()


def test_the_page_is_one_file_that_fetches_from_this_api_only(stack: Stack) -> None:
    reply = get(stack.api.web_port, "/")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    policy = reply.headers["Content-Security-Policy"]
    assert policy.startswith("default-src 'none'; script-src 'sha256-")
    assert "connect-src 'self'" in policy
    assert "unsafe" not in policy
    assert b"http://" not in reply.body
    assert b"https://" not in reply.body
    assert b"<script src" not in reply.body
    assert b'<link rel="stylesheet"' not in reply.body


def test_an_api_that_is_not_ready_says_why(stack: Stack, tmp_path: Path) -> None:
    """An API whose quota feed does not exist yet: the page waits, says why, shows no numbers."""
    d = stack.d
    port = free_port()
    api = WorkerProcess(
        ["api", "--policy", str(d.policy), "--bootstrap", d.bootstrap, "--quota-topic",
         f"missing-{uuid.uuid4().hex[:6]}", "--database", str(tmp_path / "x.db"), "--port",
         str(port)],
        tmp_path / "api.log", port, tmp_path / "api",
    )  # fmt: skip
    try:
        wait_until(lambda: get(port, "/healthz").status == 200, 60, what="api alive")
        page = parse(dump_dom(f"http://127.0.0.1:{port}/", tmp_path / "chromium"))
        assert page.one("data-ready", "false").tag == "body"
        notice = page.one("id", "notice").text()
        assert notice.startswith("The API is not ready yet the quota feed is not read yet: topic")
        assert "does not exist yet" in notice
        assert page.one("id", "freshness").text() == "waiting for the quota feed"
        assert page.all("data-subject") == []
        assert "usage" not in [n.attrs.get("id") for n in page.walk()]  # hidden until data
    finally:
        api.ensure_gone()

"""Debian's headless Chromium for tests of the status page: one-shot runs (`--dump-dom`,
`--screenshot`) as a person's first look, a DevTools session for what a person does on the page
(type a token, watch it update), and the visible text of a dumped DOM."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-extensions", "--disable-background-networking", "--mute-audio")  # fmt: skip


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "Debian's chromium is not installed: run scripts/setup (as root)"
    return found


def _run(url: str, profile: Path, args: list[str], timeout: float) -> str:
    result = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", *args, url],
        check=False, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, f"chromium exited {result.returncode}: {result.stderr[-2000:]}"
    return result.stdout


def dump_dom(url: str, profile: Path, budget_ms: int = 4000, timeout: float = 60) -> str:
    """The page's DOM after its script ran for `budget_ms` of virtual time."""
    return _run(url, profile, [f"--virtual-time-budget={budget_ms}", "--dump-dom"], timeout)


def screenshot(
    url: str, path: Path, profile: Path, size: tuple[int, int] = (1280, 900),
    budget_ms: int = 4000, timeout: float = 60,
) -> Path:  # fmt: skip
    """A PNG of the page as a person sees it after `budget_ms` of virtual time."""
    _run(url, profile, [f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}",
                        f"--screenshot={path}"], timeout)  # fmt: skip
    assert path.stat().st_size > 0
    return path


# --- the visible text of a dumped DOM ----------------------------------------------------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip
INVISIBLE = {"script", "style", "head", "title", "template"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def walk(self) -> Iterator[Node]:
        """This element and its descendants, leaving out what a person cannot see."""
        if not self.visible():
            return
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def visible(self) -> bool:
        return self.tag not in INVISIBLE and "hidden" not in self.attrs

    def text(self) -> str:
        """The text a person reads in this element (hidden parts and scripts left out), with
        whitespace collapsed."""
        parts: list[str] = []

        def collect(node: Node) -> None:
            if not node.visible():
                return
            for child in node.children:
                if isinstance(child, str):
                    parts.append(child)
                else:
                    collect(child)
                    parts.append(" ")

        collect(self)
        return " ".join("".join(parts).split())

    def all(self, attr: str, value: str | None = None) -> list[Node]:
        """Visible descendants with `attr` (equal to `value` when given)."""
        out = []
        for node in self.walk():
            if attr in node.attrs and (value is None or node.attrs[attr] == value):
                out.append(node)
        return out

    def one(self, attr: str, value: str) -> Node:
        found = self.all(attr, value)
        assert len(found) == 1, f"{len(found)} elements with {attr}={value!r}"
        return found[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


# --- a DevTools session ------------------------------------------------------------------------
class DevTools:
    """One headless Chromium with one page, driven over the DevTools protocol (a websocket, with
    aiohttp's client on a private event loop, so tests stay synchronous)."""

    def __init__(self, profile: Path, size: tuple[int, int] = (1280, 900)) -> None:
        self.profile = profile
        self.process = subprocess.Popen(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             f"--window-size={size[0]},{size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.loop = asyncio.new_event_loop()
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        try:
            self.loop.run_until_complete(self._connect(self._page_socket()))
        except BaseException:
            self.close()
            raise

    def _page_socket(self) -> str:
        """The DevTools websocket of the browser's page (its port is in the profile)."""
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            assert self.process.poll() is None, "chromium exited at start"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.loads(r.read())
        return str(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])

    async def _connect(self, url: str) -> None:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(url, max_msg_size=0)

    async def _call(self, method: str, params: dict[str, Any], seconds: float) -> Any:
        self._next_id += 1
        ident = self._next_id
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        async with asyncio.timeout(seconds):
            while True:
                message = await self.ws.receive_json()
                if message.get("id") == ident:
                    if "error" in message:
                        raise AssertionError(f"{method}: {message['error']}")
                    return message.get("result", {})
                if "method" in message:
                    self.events.append(message)

    def call(self, method: str, timeout: float = 30, **params: Any) -> Any:
        return self.loop.run_until_complete(self._call(method, params, timeout))

    def wait_event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            async with asyncio.timeout(timeout):
                while True:
                    for i, event in enumerate(self.events):
                        if event["method"] == method:
                            return self.events.pop(i)
                    message = await self.ws.receive_json()
                    if "method" in message:
                        self.events.append(message)

        return self.loop.run_until_complete(wait())

    def open(self, url: str) -> None:
        self.call("Page.enable")
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def text(self, selector: str) -> str:
        """What a person reads in the first element matching `selector` ('' when none)."""
        value = self.evaluate(
            f"(document.querySelector({json.dumps(selector)}) || {{innerText: ''}}).innerText"
        )
        return " ".join(str(value).split())

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        async def disconnect() -> None:
            if hasattr(self, "ws"):
                await self.ws.close()
            if hasattr(self, "session"):
                await self.session.close()

        try:
            self.loop.run_until_complete(disconnect())
        finally:
            self.loop.close()
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

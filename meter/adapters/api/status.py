"""The live status page at `/`: one static HTML file (package data, no build step) whose script
polls `/v1/subjects` and `/v1/alerts`. It is served with a content security policy that lets
only its own inline script and style run and lets it fetch from this API only."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib import resources

from aiohttp import web

PAGE = ("static", "status.html")


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


def _inline(tag: str, html: str) -> str:
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    if len(found) != 1:
        raise ValueError(f"the status page must have exactly one inline <{tag}>")
    return str(found[0])


@functools.cache
def page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy (hashes of its inline script and style)."""
    html = resources.files("meter.adapters.api").joinpath(*PAGE).read_text(encoding="utf-8")
    policy = "; ".join((
        "default-src 'none'",
        f"script-src {_hash(_inline('script', html))}",
        f"style-src {_hash(_inline('style', html))}",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ))  # fmt: skip
    return html.encode(), policy


async def status_page(request: web.Request) -> web.Response:
    body, policy = page()
    return web.Response(
        body=body,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": policy,
            "Cache-Control": "no-cache",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", status_page)

"""What every handler of `meter api` reads: the policy, the feed, the store, who is asking."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from meter.adapters.api.auth import OPEN, Principal, Tokens
from meter.adapters.api.feed import FeedReader
from meter.adapters.api.problems import not_found, unavailable
from meter.adapters.report.service import Issuer
from meter.core.enforcement import FeedState, known, org_of
from meter.core.policy import Policy
from meter.core.windows import format_ms

CONTEXT: web.AppKey[Context] = web.AppKey("meter", object)  # type: ignore[arg-type]


@dataclass
class Context:
    policy: Policy
    feed: FeedState
    reader: FeedReader | None
    tokens: Tokens | None
    store: Any | None = None
    """The usage store's read side (`meter.adapters.api.history.StoreReader`), when configured."""
    statements: Issuer = field(default_factory=Issuer)
    """How statements are issued: the workers' horizons and the signing key."""
    clock: Callable[[], float] = time.time

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def require_feed(self) -> None:
        """503 until the feed is read to the end it had at start."""
        reader = self.reader
        if reader is None or not reader.caught_up:
            why = "no quota feed" if reader is None else reader.waiting_for
            raise unavailable(f"the quota feed is not read yet: {why}")

    def feed_info(self) -> dict[str, str | None]:
        feed = self.feed
        return {
            "updated_at": None if feed.updated_ms is None else format_ms(feed.updated_ms),
            "watermark": None if feed.watermark_ms is None else format_ms(feed.watermark_ms),
        }


def context(request: web.Request) -> Context:
    return request.app[CONTEXT]


def principal(request: web.Request) -> Principal:
    found = request.get("principal")
    return found if isinstance(found, Principal) else OPEN


def visible_subject(request: web.Request, subject_type: str, subject: str) -> str | None:
    """The subject's organisation; 404 when the policy does not know the subject or the caller
    may not see it (the same answer: a scoped token learns nothing of other organisations)."""
    ctx = context(request)
    org = org_of(ctx.policy, subject_type, subject)
    if not known(ctx.policy, subject_type, subject) or not principal(request).sees_org(org):
        raise not_found(f"no {subject_type} {subject!r}")
    return org

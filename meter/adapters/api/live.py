"""Current usage from the quota feed: per subject, subjects by state, and the check endpoint a
gateway or proxy calls before forwarding a call."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from meter.adapters.api.context import context, principal, visible_subject
from meter.adapters.api.params import Params
from meter.adapters.api.problems import QUOTA_EXCEEDED, Problem, invalid, not_found
from meter.core.enforcement import CapNow, check, subject_caps, worst_state
from meter.core.ratelimit import headers as ratelimit_headers
from meter.core.windows import format_ms

STATES = ("ok", "warning", "exceeded")
METRICS = ("calls", "records")


def _json(
    body: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
) -> web.Response:
    text = json.dumps(body, separators=(",", ":"))
    response = web.Response(status=status, text=text, content_type="application/json")
    for name, value in headers or ():
        response.headers.add(name, value)
    return response


def _subject(subject_type: str, subject: str, org: str | None) -> dict[str, Any]:
    return {"type": subject_type, "id": subject, "org_id": org}


def _filtered(caps: list[CapNow], cap: str | None, metric: str | None) -> list[CapNow]:
    return [
        c for c in caps
        if (cap is None or cap in (c.cap.key, c.cap.id))
        and (metric is None or c.cap.metric == metric)
    ]  # fmt: skip


async def usage(request: web.Request) -> web.Response:
    """GET /v1/apps/{id}/usage, /v1/orgs/{id}/usage: every cap's usage now."""
    ctx = context(request)
    stype = "app" if request.match_info["kind"] == "apps" else "org"
    subject = request.match_info["id"]
    params = Params(request, ("cap", "metric"))
    cap, metric = params.text("cap"), params.choice("metric", METRICS)
    org = visible_subject(request, stype, subject)
    ctx.require_feed()
    now = ctx.now_ms()
    caps = subject_caps(ctx.policy, ctx.feed, stype, subject, now)
    if cap is not None and not any(cap in (c.cap.key, c.cap.id) for c in caps):
        raise invalid("cap", f"{stype} {subject} has no cap {cap!r}")
    caps = _filtered(caps, cap, metric)
    body: dict[str, Any] = {
        "subject": _subject(stype, subject, org),
        "as_of": format_ms(now),
        "feed": ctx.feed_info(),
        "state": worst_state(caps),
        "caps": [c.to_json() for c in caps],
    }
    if stype == "org":
        body["apps"] = sorted(a.id for a in ctx.policy.apps.values() if a.org_id == subject)
    return _json(body)


async def subjects(request: web.Request) -> web.Response:
    """GET /v1/subjects: apps and orgs of the policy with their state now, filtered."""
    ctx = context(request)
    params = Params(request, ("type", "org_id", "state", "include", "limit", "cursor"))
    stype = params.choice("type", ("app", "org"))
    org_filter = params.text("org_id")
    state = params.choice("state", STATES)
    include = params.choice("include", ("caps",))
    limit = params.integer("limit", default=100, low=1, high=1000)
    cursor = params.text("cursor")
    ctx.require_feed()
    who = principal(request)
    now = ctx.now_ms()
    candidates = [("app", a.id, a.org_id) for a in ctx.policy.apps.values()]
    candidates += [("org", o, o) for o in ctx.policy.orgs]
    rows = []
    for t, s, org in sorted(candidates):
        if (stype and t != stype) or (org_filter and org != org_filter) or not who.sees_org(org):
            continue
        if cursor is not None and f"{t}:{s}" <= cursor:
            continue
        caps = subject_caps(ctx.policy, ctx.feed, t, s, now)
        worst = worst_state(caps)
        if state is not None and worst != state:
            continue
        row: dict[str, Any] = {"subject": _subject(t, s, org), "state": worst}
        if include == "caps":
            row["caps"] = [c.to_json() for c in caps]
        rows.append(row)
        if len(rows) > limit:
            break
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1]["subject"] if rows else None
    return _json({
        "as_of": format_ms(now),
        "feed": ctx.feed_info(),
        "data": rows,
        "next_cursor": f"{last['type']}:{last['id']}" if more and last else None,
    })  # fmt: skip


async def check_call(request: web.Request) -> web.Response:
    """GET /v1/check: may this app make this call now? 200, or 429 (or `deny_status`) with the
    rate-limit headers and a problem naming the violated caps."""
    ctx = context(request)
    params = Params(request, ("app_id", "endpoint", "deny_status"))
    app_id = params.text("app_id") or request.headers.get("X-Meter-App-Id")
    if not app_id:
        raise invalid("app_id", "required (or the X-Meter-App-Id header)")
    endpoint = params.text("endpoint") or _forwarded_path(request)
    deny = int(params.choice("deny_status", ("429", "403"), default="429") or 429)
    if not principal(request).sees_org(ctx.policy.org_of(app_id, None)):
        # a scoped token may check its own apps only; others look unknown
        raise not_found(f"no app {app_id!r}")
    ctx.require_feed()
    now = ctx.now_ms()
    decision = check(ctx.policy, ctx.feed, app_id, endpoint, now)
    headers = ratelimit_headers(decision.caps, now)
    if decision.allowed:
        return _json({"allowed": True, "caps": [c.to_json() for c in decision.caps]}, 200, headers)
    names = [c.cap.key for c in decision.violated]
    retry = decision.retry_after_s or 1
    raise Problem(
        deny, QUOTA_EXCEEDED, "Request cannot be satisfied as assigned quota has been exceeded",
        f"app {app_id}: {', '.join(names)} exceeded; the first resets in "
        f"{min(c.reset_in_s(now) for c in decision.violated)} s",
        extra={
            "violated-policies": names,
            "caps": [c.to_json() for c in decision.violated],
        },
        headers=[*headers, ("Retry-After", str(retry))],
    )  # fmt: skip


def _forwarded_path(request: web.Request) -> str | None:
    """The original request's path, as nginx (`X-Original-URI`) or Traefik and Envoy
    (`X-Forwarded-Uri`) pass it, without its query; or the X-Meter-Endpoint header."""
    for name in ("X-Meter-Endpoint", "X-Original-URI", "X-Forwarded-Uri"):
        value = request.headers.get(name)
        if value:
            return value.split("?", 1)[0]
    return None

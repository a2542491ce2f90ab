"""Usage statements over HTTP: `POST /v1/statements` issues one (recorded in the store's
register, signed when the API has a key), `GET /v1/statements` lists them, and
`GET /v1/statements/{id}` serves one in every format and its signature. An organisation's token
sees its own statements only; any other is answered as if it did not exist."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from aiohttp import web

from meter.adapters.api.context import context, principal
from meter.adapters.api.history import StoreReader
from meter.adapters.api.params import Params
from meter.adapters.api.problems import Problem, invalid, not_found, unavailable
from meter.adapters.report.naming import stem
from meter.adapters.report.outputs import csv_zip, render
from meter.adapters.report.service import issue
from meter.adapters.report.signing import sign
from meter.adapters.report.source import StatementRequest
from meter.adapters.report.tables import csv_files
from meter.adapters.store.statement_queries import (
    StoredStatement,
    get_statement,
    list_statements,
    successor,
)
from meter.core.statement import StatementError, parse_bound
from meter.core.windows import format_ms

__all__ = ["add_routes"]

ID = re.compile(r"[0-9a-f]{64}")
FIELDS = ("org_id", "from", "to", "tz", "as_of", "top")
FORMATS = {
    "json": ("application/json", "json"),
    "html": ("text/html", "html"),
    "table": ("text/plain", "txt"),
    "csv": ("application/zip", "csv.zip"),
    "sig": ("application/json", "sig.json"),
}
MAX_BODY = 4096


def _store(request: web.Request) -> StoreReader:
    store = context(request).store
    if not isinstance(store, StoreReader):
        raise unavailable("no usage store is configured (--database)")
    return store


def _text(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise invalid(name, "required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise invalid(name, "must be a non-empty string")
    return value


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise Problem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            "send the request as application/json",
        )
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise Problem(413, "too-large", "Request too large", f"at most {MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid("body", f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    for name in body:
        if name not in FIELDS:
            raise invalid(name, f"unknown field (a statement takes: {', '.join(FIELDS)})")
    return body


def _request(body: dict[str, Any], own_org: str | None, orgs: Any) -> tuple[StatementRequest, int]:
    org_id = _text(body, "org_id", required=True)
    assert org_id is not None
    if org_id not in orgs or (own_org is not None and org_id != own_org):
        raise not_found(f"no org {org_id!r}")
    tz = _text(body, "tz") or "UTC"
    top = body.get("top", 10)
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 1000:
        raise invalid("top", "an integer from 1 to 1000")
    try:
        bounds = [parse_bound(_text(body, n, required=True) or "", tz, n) for n in ("from", "to")]
        as_of_text = _text(body, "as_of")
        as_of = None if as_of_text is None else parse_bound(as_of_text, tz, "as_of")
    except StatementError as exc:
        raise invalid(exc.param, exc.message) from None
    return StatementRequest(org_id, bounds[0], bounds[1], tz, as_of), top


async def create_statement(request: web.Request) -> web.Response:
    """POST /v1/statements: issue an organisation's statement (201; 200 when the same bytes were
    issued before)."""
    Params(request, ())
    ctx = context(request)
    body = await _body(request)
    req, top = _request(body, principal(request).org, ctx.policy.orgs)
    issuer = ctx.statements
    rules = replace(issuer.rules, top=top)
    try:
        issued = await _store(request).run(
            lambda db: issue(db, ctx.policy, req, rules, key=issuer.key)
        )
    except StatementError as exc:
        raise invalid(exc.param, exc.message) from None
    response = web.Response(
        status=201 if issued.recorded else 200, body=issued.body, content_type="application/json"
    )
    response.headers["Location"] = f"/v1/statements/{issued.id}"
    response.headers["ETag"] = f'"{issued.id}"'
    return response


def _summary(s: StoredStatement) -> dict[str, Any]:
    return {
        "id": s.id,
        "org_id": s.org_id,
        "from": format_ms(s.period_from),
        "to": format_ms(s.period_to),
        "tz": s.tz,
        "as_of": None if s.as_of is None else format_ms(s.as_of),
        "status": s.status,
        "supersedes": s.supersedes,
        "signed": s.signature is not None,
        "created_at": format_ms(s.created_at),
    }


async def statement_list(request: web.Request) -> web.Response:
    """GET /v1/statements: the statements issued, newest first."""
    params = Params(request, ("org_id", "limit"))
    own = principal(request).org
    org_id = params.text("org_id")
    if own is not None and org_id is not None and org_id != own:
        raise not_found(f"no org {org_id!r}")
    limit = params.integer("limit", default=100, low=1, high=1000)
    found = await _store(request).run(lambda db: list_statements(db, own or org_id, limit))
    body = {"data": [_summary(s) for s in found]}
    return web.Response(text=json.dumps(body), content_type="application/json")


async def statement(request: web.Request) -> web.Response:
    """GET /v1/statements/{id}: `format` json (the statement itself), html, table, csv (a ZIP,
    or one `section`'s CSV) or sig (its signature)."""
    params = Params(request, ("format", "section"))
    fmt = params.choice("format", tuple(FORMATS), default="json") or "json"
    section = params.text("section")
    if section is not None and fmt != "csv":
        raise invalid("section", "only with format=csv")
    sid = request.match_info["id"]
    store = _store(request)
    found = await store.run(lambda db: get_statement(db, sid)) if ID.fullmatch(sid) else None
    if found is None or not principal(request).sees_org(found.org_id):
        raise not_found(f"no statement {sid!r}")
    doc = json.loads(found.body)
    content_type, ext = FORMATS[fmt]
    name = stem(doc, found.id)
    if fmt == "sig":
        key = context(request).statements.key
        data = found.signature or (None if key is None else sign(found.body, key))
        if data is None:
            raise not_found(f"statement {sid} is not signed (the API has no --statement-key)")
    elif fmt == "csv" and section is not None:
        files = csv_files(doc, found.id)
        data = files.get(f"{section}.csv")
        if data is None:
            sections = ", ".join(
                sorted(f.removesuffix(".csv") for f in files if f.endswith(".csv"))
            )
            raise invalid("section", f"one of {sections}")
        content_type, name, ext = "text/csv", f"{name}-{section}", "csv"
    elif fmt == "csv":
        data = csv_zip(doc, found.id)
    else:
        data = render(doc, found.body, found.id, fmt)
    response = web.Response(
        body=data,
        content_type=content_type,
        charset=None if fmt == "csv" and section is None else "utf-8",
    )
    response.headers["ETag"] = f'"{found.id}.{ext}"'
    disposition = "attachment" if fmt == "csv" else "inline"
    response.headers["Content-Disposition"] = f'{disposition}; filename="{name}.{ext}"'
    newer = await store.run(lambda db: successor(db, found.id))
    if newer is not None:
        response.headers["Link"] = f'</v1/statements/{newer}>; rel="successor-version"'
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/statements", create_statement)
    app.router.add_get("/v1/statements", statement_list)
    app.router.add_get("/v1/statements/{id}", statement)

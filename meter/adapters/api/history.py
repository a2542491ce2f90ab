"""Usage history and alerts from the usage store (`meter store`): `GET /v1/usage` (JSON, or CSV
with `Accept: text/csv`) and `GET /v1/alerts`.

The store is synchronous (sqlite3, psycopg): queries run on a small thread pool, one database
connection per thread, so the event loop (and the live endpoints) never wait on the database.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web

from meter.adapters.api.context import context, principal
from meter.adapters.api.params import Params
from meter.adapters.api.problems import Problem, invalid, not_found, unavailable
from meter.adapters.store.database import OPERATIONAL_ERRORS, Database, open_database
from meter.adapters.store.queries import (
    AlertQuery,
    QueryError,
    UsagePage,
    UsageQuery,
    alerts,
    usage,
)
from meter.core.windows import format_ms

T = TypeVar("T")
WINDOWS = ("15m", "1h", "1d", "month", "total")
GROUPS = ("subject", "endpoint", "recipient")
PARAM_NAMES = {"subjects": "subject", "subject_type": "subject_type"}
"""Query fields whose API parameter has another name."""


class StoreReader:
    """Runs queries against the store's database on `threads` threads."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="store-query")
        self._opened: list[Database] = []
        self._lock = threading.Lock()

    def _db(self) -> Database:
        db: Database | None = getattr(self._local, "db", None)
        if db is None:
            db = open_database(self.url, timeout_s=5.0)
            self._local.db = db
            with self._lock:
                self._opened.append(db)
        return db

    async def run(self, query: Callable[[Database], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: query(self._db()))
        except OPERATIONAL_ERRORS as exc:
            self._local = threading.local()  # reconnect on the next query
            raise unavailable(f"the usage store does not answer: {exc}") from exc

    async def problem(self) -> str | None:
        """None when the store answers; else why not (for /readyz)."""
        try:
            await self.run(lambda db: db.fetchall("SELECT 1"))
        except Problem as p:
            return p.detail
        except Exception as exc:  # any failure means not ready
            return f"the usage store does not answer: {exc}"
        return None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for db in self._opened:
                db.close()


def _store(request: web.Request) -> StoreReader:
    store = context(request).store
    if not isinstance(store, StoreReader):
        raise unavailable("no usage store is configured (--database)")
    return store


def _list(params: Params, name: str, choices: tuple[str, ...] | None = None) -> tuple[str, ...]:
    raw = params.text(name)
    if raw is None:
        return ()
    items = tuple(item.strip() for item in raw.split(","))
    if any(not item for item in items):
        raise invalid(name, "a comma-separated list of non-empty values")
    if choices is not None:
        for item in items:
            if item not in choices:
                raise invalid(name, f"each must be one of {', '.join(choices)}, got {item!r}")
    return items


def _scoped_org(request: web.Request, org_id: str | None) -> str | None:
    """An organisation's token sees its organisation only: the filter it must have."""
    own = principal(request).org
    if own is None:
        return org_id
    if org_id is not None and org_id != own:
        raise not_found(f"no org {org_id!r}")
    return own


def _query_problem(exc: QueryError) -> Problem:
    return invalid(PARAM_NAMES.get(exc.param, exc.param), exc.message)


def _usage_row(row: Any) -> dict[str, Any]:
    return {
        "from": format_ms(row.from_ms),
        "to": format_ms(row.to_ms),
        "subject_type": row.subject_type,
        "subject": row.subject,
        "org_id": row.org_id,
        "dimensions": row.dimensions,
        "calls": row.calls,
        "records": row.records,
        "final": row.final,
    }


def _csv(page: UsagePage, dimension: str | None) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    head = ["from", "to", "subject_type", "subject", "org_id"]
    head += [dimension] if dimension else []
    writer.writerow([*head, "calls", "records", "final"])
    for row in page.rows:
        cells: list[object] = [format_ms(row.from_ms), format_ms(row.to_ms), row.subject_type]
        cells += [row.subject or "", row.org_id or ""]
        cells += [row.dimensions.get(dimension, "")] if dimension else []
        cells += ["" if n is None else n for n in (row.calls, row.records)]
        writer.writerow([*cells, "true" if row.final else "false"])
    return out.getvalue()


async def usage_history(request: web.Request) -> web.Response:
    """GET /v1/usage: usage buckets over [from, to)."""
    params = Params(
        request,
        ("subject_type", "subject", "org_id", "from", "to", "window", "tz", "group_by", "metric",
         "top", "as_of", "cursor", "limit"),
    )  # fmt: skip
    stype = params.choice("subject_type", ("app", "org"))
    if stype is None:
        raise invalid("subject_type", "required: app or org")
    from_ms, to_ms = params.required_time_ms("from"), params.required_time_ms("to")
    if to_ms <= from_ms:
        raise invalid("to", "must be after from")
    window = params.choice("window", WINDOWS, default="1d")
    group_by = _list(params, "group_by", GROUPS) or ("subject",)
    query = UsageQuery(
        subject_type=stype,
        from_ms=from_ms,
        to_ms=to_ms,
        window=None if window == "total" else window,
        tz=params.text("tz", default="UTC") or "UTC",
        subjects=_list(params, "subject"),
        org_id=_scoped_org(request, params.text("org_id")),
        group_by=group_by,
        metric=params.choice("metric", ("calls", "records", "both"), default="both") or "both",
        top=params.integer("top", default=0, low=1, high=1000) if params.text("top") else None,
        as_of_ms=params.time_ms("as_of"),
        cursor=params.text("cursor"),
        limit=params.integer("limit", default=1000, low=1, high=10_000),
    )
    csv_wanted = _wants_csv(request)
    try:
        page = await _store(request).run(lambda db: usage(db, query))
    except QueryError as exc:
        raise _query_problem(exc) from None
    dimension = next((g for g in group_by if g != "subject"), None)
    if csv_wanted:
        response = web.Response(text=_csv(page, dimension), content_type="text/csv")
        if page.next_cursor:
            response.headers["X-Next-Cursor"] = page.next_cursor
        return response
    body = {
        "subject_type": stype,
        "from": format_ms(from_ms),
        "to": format_ms(to_ms),
        "window": window,
        "tz": query.tz,
        "group_by": list(group_by),
        "as_of": None if page.as_of_ms is None else format_ms(page.as_of_ms),
        "source_window": page.source_window,
        "freshness": None if page.freshness_ms is None else format_ms(page.freshness_ms),
        "data": [_usage_row(r) for r in page.rows],
        "next_cursor": page.next_cursor,
    }
    return web.Response(text=json.dumps(body), content_type="application/json")


def _wants_csv(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    kinds = [part.split(";", 1)[0].strip() for part in accept.split(",") if part.strip()]
    if not kinds or any(k in ("application/json", "*/*", "application/*") for k in kinds):
        return False
    if "text/csv" in kinds:
        return True
    raise Problem(
        406, "not-acceptable", "Not acceptable",
        f"Accept: {accept}: this endpoint answers application/json or text/csv",
    )  # fmt: skip


async def alert_history(request: web.Request) -> web.Response:
    """GET /v1/alerts: alerts as published, filtered, oldest first unless order=newest."""
    params = Params(
        request,
        ("subject_type", "subject", "org_id", "kind", "severity", "from", "to", "order",
         "cursor", "limit"),
    )  # fmt: skip
    query = AlertQuery(
        subject_type=params.choice("subject_type", ("app", "org")),
        subjects=_list(params, "subject"),
        org_id=_scoped_org(request, params.text("org_id")),
        kinds=_list(params, "kind"),
        severities=_list(params, "severity"),
        from_ms=params.time_ms("from"),
        to_ms=params.time_ms("to"),
        newest_first=params.choice("order", ("oldest", "newest"), default="oldest") == "newest",
        cursor=params.text("cursor"),
        limit=params.integer("limit", default=100, low=1, high=10_000),
    )
    try:
        page = await _store(request).run(lambda db: alerts(db, query))
    except QueryError as exc:
        raise _query_problem(exc) from None
    body = {"data": [a.payload for a in page.alerts], "next_cursor": page.next_cursor}
    return web.Response(text=json.dumps(body), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/usage", usage_history)
    app.router.add_get("/v1/alerts", alert_history)

"""`meter api`: an aiohttp server of its own (queries never compete with counting), answering
current usage from the quota feed and history from the usage store.

Routes: `/v1/...` (bearer tokens when configured), `/openapi.json`, `/healthz`, `/readyz`.
Every error is RFC 9457 problem+json. Tokens never reach a log: the access log shows the method,
path and status only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from meter.adapters.api import history, live, statements, status
from meter.adapters.api.auth import OPEN
from meter.adapters.api.context import CONTEXT, Context, context
from meter.adapters.api.openapi import document
from meter.adapters.api.problems import Problem, not_found, unauthorized
from meter.adapters.api.settings import PORT, ApiSettings
from meter.core.errors import ConfigError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC = ("/healthz", "/readyz", "/openapi.json")


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Problems, aiohttp's own HTTP errors and failures all become problem+json."""
    try:
        return await handler(request)
    except Problem as p:
        return p.response(request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status, "http-error")
        detail = f"{request.method} {request.path}: {exc.reason}"
        problem = not_found(detail) if exc.status == 404 else Problem(
            exc.status, kind, exc.reason, detail
        )  # fmt: skip
        response = problem.response(request.path)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return Problem(
            500, "internal", "Internal error", "the request failed; the API's log has the cause"
        ).response(request.path)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer tokens on `/v1/`: the principal goes in `request["principal"]`."""
    tokens = context(request).tokens
    if tokens is None or request.path in PUBLIC or not request.path.startswith("/v1/"):
        request["principal"] = OPEN
        return await handler(request)
    header = request.headers.get("Authorization")
    if not header:
        raise unauthorized("an Authorization: Bearer <token> header is required")
    found = tokens.principal(header)
    if found is None:
        raise unauthorized("the bearer token is not valid")
    request["principal"] = found
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ctx = context(request)
    waiting = []
    if ctx.reader is None or not ctx.reader.caught_up:
        waiting.append(ctx.reader.waiting_for if ctx.reader else "no quota feed")
    if ctx.reader is not None:
        waiting += ctx.reader.trouble()  # Kafka unreachable, the feed stalled
    if ctx.store is not None:
        problem = await ctx.store.problem()
        if problem:
            waiting.append(problem)
    body: dict[str, Any] = {"status": "waiting" if waiting else "ready", "waiting_for": waiting}
    body["feed"] = {"keys": len(ctx.feed), **ctx.feed_info()}
    return web.json_response(body, status=503 if waiting else 200)


async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(document(), indent=1), content_type="application/json")


async def _no_server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.pop("Server", None)  # no versions for scanners


def make_app(ctx: Context) -> web.Application:
    app = web.Application(middlewares=[problems, authenticate])
    app.on_response_prepare.append(_no_server_header)
    app[CONTEXT] = ctx
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/v1/{kind:apps|orgs}/{id}/usage", live.usage)
    app.router.add_get("/v1/subjects", live.subjects)
    app.router.add_get("/v1/check", live.check_call)
    history.add_routes(app)
    statements.add_routes(app)
    status.add_routes(app)
    return app


async def serve(ctx: Context, host: str, port: int, stop: asyncio.Event) -> None:
    """Run the feed reader and the server until `stop` is set (or the reader fails)."""
    runner = web.AppRunner(
        make_app(ctx),
        access_log=logging.getLogger("meter.api.access"),
        access_log_format='%a "%r" %s %b %Tf',
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(PORT.label, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    log.info("meter api on http://%s:%d (OpenAPI at /openapi.json)", host, port)
    tasks: list[asyncio.Task[Any]] = []
    if ctx.reader is not None:
        tasks.append(asyncio.ensure_future(ctx.reader.run()))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopped:
                task.result()  # the reader stopped: its error is the API's
    finally:
        for task in [stopped, *tasks]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()


def run_until_signal(ctx: Context, settings: ApiSettings) -> int:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(ctx, settings.host, settings.port, stop)

    asyncio.run(main())
    return 0

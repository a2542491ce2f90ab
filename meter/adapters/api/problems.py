"""RFC 9457 problem details: every error of the API is `application/problem+json` and names
what was wrong (the parameter, the token, the cap)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

PROBLEM_TYPES = "https://usage-meter.example/problems/"
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
"""The IETF RateLimit draft's problem type, with `violated-policies`."""


class Problem(Exception):  # noqa: N818 - it is the response, not a failure of the API
    """Raised by a handler; the error middleware turns it into a problem+json response."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        *,
        extra: Mapping[str, Any] | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.extra = dict(extra or {})
        self.headers = list(headers)

    def body(self, instance: str) -> dict[str, Any]:
        kind = self.kind if "://" in self.kind else PROBLEM_TYPES + self.kind
        return {
            "type": kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
            **self.extra,
        }

    def response(self, instance: str) -> web.Response:
        response = web.Response(
            status=self.status,
            text=json.dumps(self.body(instance)),
            content_type="application/problem+json",
        )
        for name, value in self.headers:
            response.headers.add(name, value)
        return response


def invalid(name: str, reason: str) -> Problem:
    """400 naming the bad parameter."""
    return Problem(
        400, "invalid-parameter", "Invalid parameter", f"{name}: {reason}",
        extra={"invalid-params": [{"name": name, "reason": reason}]},
    )  # fmt: skip


def not_found(what: str) -> Problem:
    return Problem(404, "not-found", "Not found", what)


def unauthorized(detail: str) -> Problem:
    return Problem(
        401, "unauthorized", "Unauthorized", detail,
        headers=[("WWW-Authenticate", 'Bearer realm="meter"')],
    )  # fmt: skip


def unavailable(detail: str, retry_after_s: int = 5) -> Problem:
    return Problem(
        503, "not-ready", "Not ready", detail, headers=[("Retry-After", str(retry_after_s))]
    )

"""Query parameters, checked: an unknown, repeated or bad parameter is a 400 problem naming it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from aiohttp import web

from meter.adapters.api.problems import invalid


class Params:
    """The query of one request, restricted to `allowed` names."""

    def __init__(self, request: web.Request, allowed: Iterable[str]) -> None:
        self.query = request.query
        allowed = set(allowed)
        for name in self.query:
            if name not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                raise invalid(name, f"unknown parameter (this endpoint takes: {known})")
            if len(self.query.getall(name)) > 1:
                raise invalid(name, "given more than once")

    def text(self, name: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.query.get(name)
        if value is None:
            if required:
                raise invalid(name, "required")
            return default
        if not value:
            raise invalid(name, "empty (leave the parameter out instead)")
        return value

    def choice(self, name: str, choices: Sequence[str], default: str | None = None) -> str | None:
        value = self.text(name, default=default)
        if value is not None and value not in choices:
            raise invalid(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def integer(self, name: str, *, default: int, low: int, high: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise invalid(name, f"must be an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise invalid(name, f"must be from {low} to {high}, got {value}")
        return value

    def required_time_ms(self, name: str) -> int:
        value = self.time_ms(name)
        if value is None:
            raise invalid(name, "required")
        return value

    def time_ms(self, name: str) -> int | None:
        """An RFC 3339 date-time with an offset (or `Z`), or a date (midnight UTC)."""
        raw = self.text(name)
        if raw is None:
            return None
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            raise invalid(name, f"must be an RFC 3339 date-time, got {raw!r}") from None
        if moment.tzinfo is None:
            if len(raw) != len("2022-03-01"):
                raise invalid(name, f"needs a UTC offset or Z, got {raw!r}")
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)

"""Settings of the alert sinks, read from `meter worker` flags and `METER_*` variables.

Printing them never shows the webhook secret or a password inside a URL.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from urllib.parse import urlsplit, urlunsplit

from meter.config import Option, add_arguments, duration_ms, load, positive_int, positive_ms
from meter.core.errors import ConfigError

EARLIEST = "earliest"
LATEST = "latest"
SINCE = "since"


@dataclass(frozen=True, slots=True)
class StartPosition:
    """Where a sink's consumer group starts when it has no committed offset (its first start):
    the oldest alert kept (`earliest`), only new alerts (`latest`), or alerts emitted in the
    last `lookback_ms` (`since`). A group that has committed resumes where it stopped."""

    mode: str = EARLIEST
    lookback_ms: int = 0

    def __str__(self) -> str:
        return f"last {self.lookback_ms} ms" if self.mode == SINCE else self.mode


def start_position(text: str) -> StartPosition:
    value = text.strip().lower()
    if value in {EARLIEST, LATEST}:
        return StartPosition(value)
    try:
        lookback = duration_ms(value)
    except ValueError:
        raise ValueError("expected earliest, latest or a duration such as 1d") from None
    if lookback <= 0:
        raise ValueError("the duration must be positive")
    return StartPosition(SINCE, lookback)


def http_url(text: str) -> str:
    """An absolute http(s) URL with a host."""
    value = text.strip()
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if parts.scheme not in {"http", "https"}:
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if parts.fragment:
        raise ValueError("the URL must not have a #fragment")
    return value


def base_url(text: str) -> str:
    """An http(s) URL that paths are appended to: no query, no trailing slash."""
    value = http_url(text)
    if urlsplit(value).query:
        raise ValueError("the base URL must not have a ?query")
    return value.rstrip("/")


def redact_url(url: str | None) -> str | None:
    """`url` with its password and query (which may hold tokens) replaced by ***."""
    if url is None:
        return None
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        netloc = f"{parts.username or ''}:***@{host}"
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def non_negative_ms(text: str) -> int:
    value = duration_ms(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def secret_text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


@dataclass(frozen=True)
class SinkSettings:
    """Which alert sinks run besides the alerts topic, and how they deliver."""

    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_timeout_ms: int = 10_000
    alertmanager_url: str | None = None
    alertmanager_resend_ms: int = 60_000
    alertmanager_min_firing_ms: int = 300_000
    alertmanager_generator_url: str | None = None
    alertmanager_timeout_ms: int = 10_000
    batch: int = 100
    backoff_ms: int = 500
    max_backoff_ms: int = 30_000
    start: StartPosition = StartPosition()

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "webhook_secret":
                shown.append(f"{f.name}={'***' if value else None}")
            elif f.name.endswith("_url"):
                shown.append(f"{f.name}={redact_url(value)!r}")
            else:
                shown.append(f"{f.name}={value!r}")
        return f"SinkSettings({', '.join(shown)})"

    __str__ = __repr__

    @classmethod
    def load(cls, flags: Mapping[str, object | None], env: Mapping[str, str]) -> SinkSettings:
        values = load(SINK_OPTIONS, flags, env)
        if values["webhook_url"] is not None and values["webhook_secret"] is None:
            raise ConfigError(
                SINK_OPTIONS[1].label, "a webhook needs a shared secret to sign its requests"
            )
        if values["max_backoff_ms"] < values["backoff_ms"]:
            raise ConfigError(
                SINK_OPTIONS[10].label,
                f"must be at least --sink-backoff ({values['backoff_ms']} ms)",
            )
        return cls(**values)


SINK_OPTIONS: tuple[Option, ...] = (
    Option(
        "--webhook-url", None, http_url,
        "POST each alert (the exact JSON published on the topic) here", "off",
    ),
    Option(
        "--webhook-secret", None, secret_text,
        "HMAC-SHA256 key; shown as `***` when printed. Prefer the variable (flags show in `ps`)",
        "required with a URL", secret=True,
    ),
    Option("--webhook-timeout", 10_000, positive_ms, "one request", "`10s`",
           field="webhook_timeout_ms"),
    Option(
        "--alertmanager-url", None, base_url,
        "Alertmanager base URL; alerts go to `POST /api/v2/alerts`", "off",
    ),
    Option("--alertmanager-resend", 60_000, positive_ms, "re-send active alerts this often",
           "`60s`", field="alertmanager_resend_ms"),
    Option(
        "--alertmanager-min-firing", 300_000, non_negative_ms,
        "`endsAt` is never earlier than first send + this", "`5m`",
        field="alertmanager_min_firing_ms",
    ),
    Option("--alertmanager-generator-url", None, http_url, "`generatorURL` of the alerts",
           "none"),
    Option("--alertmanager-timeout", 10_000, positive_ms, "one request", "`10s`",
           field="alertmanager_timeout_ms"),
    Option(
        "--sink-batch", 100, positive_int,
        "alerts in flight per sink (the bounded queue; the rest wait on Kafka)", "`100`",
        field="batch",
    ),
    Option("--sink-backoff", 500, positive_ms, "first retry delay", "`500ms`",
           field="backoff_ms"),
    Option("--sink-max-backoff", 30_000, positive_ms, "longest retry delay", "`30s`",
           field="max_backoff_ms"),
    Option(
        "--sink-start", StartPosition(), start_position,
        "where a sink with no committed offsets starts: `earliest`, `latest`, or a duration "
        "back such as `1d`", "`earliest`", field="start",
    ),
)  # fmt: skip
"""The alert sinks' settings, on `meter worker`; each sink runs when its URL is set."""


def is_enabled(settings: SinkSettings) -> bool:
    """True when any sink besides the alerts topic is configured."""
    return settings.webhook_url is not None or settings.alertmanager_url is not None


def add_sink_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sink flags to a command (all default to None: `SinkSettings.load` decides)."""
    add_arguments(parser.add_argument_group("alert sinks (besides the alerts topic)"), SINK_OPTIONS)

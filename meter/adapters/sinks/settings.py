"""Settings of the alert sinks, read from `meter worker` flags and `METER_*` variables.

Printing them never shows the webhook secret or a password inside a URL.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from urllib.parse import urlsplit, urlunsplit

from meter.config import duration_ms, positive_int, setting
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


def positive_ms(text: str) -> int:
    value = duration_ms(text)
    if value <= 0:
        raise ValueError("must be longer than zero")
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
        webhook_url = setting(flags, env, "webhook_url", "METER_WEBHOOK_URL", None, http_url)
        secret = setting(flags, env, "webhook_secret", "METER_WEBHOOK_SECRET", None, secret_text)
        if webhook_url is not None and secret is None:
            raise ConfigError(
                "--webhook-secret / METER_WEBHOOK_SECRET",
                "a webhook needs a shared secret to sign its requests",
            )
        backoff = setting(flags, env, "sink_backoff", "METER_SINK_BACKOFF", 500, positive_ms)
        max_backoff = setting(
            flags, env, "sink_max_backoff", "METER_SINK_MAX_BACKOFF", 30_000, positive_ms
        )
        if max_backoff < backoff:
            raise ConfigError(
                "--sink-max-backoff / METER_SINK_MAX_BACKOFF",
                f"must be at least --sink-backoff ({backoff} ms)",
            )
        return cls(
            webhook_url=webhook_url,
            webhook_secret=secret,
            webhook_timeout_ms=setting(
                flags, env, "webhook_timeout", "METER_WEBHOOK_TIMEOUT", 10_000, positive_ms
            ),
            alertmanager_url=setting(
                flags, env, "alertmanager_url", "METER_ALERTMANAGER_URL", None, base_url
            ),
            alertmanager_resend_ms=setting(
                flags, env, "alertmanager_resend", "METER_ALERTMANAGER_RESEND", 60_000, positive_ms
            ),
            alertmanager_min_firing_ms=setting(
                flags,
                env,
                "alertmanager_min_firing",
                "METER_ALERTMANAGER_MIN_FIRING",
                300_000,
                non_negative_ms,
            ),
            alertmanager_generator_url=setting(
                flags,
                env,
                "alertmanager_generator_url",
                "METER_ALERTMANAGER_GENERATOR_URL",
                None,
                http_url,
            ),
            alertmanager_timeout_ms=setting(
                flags,
                env,
                "alertmanager_timeout",
                "METER_ALERTMANAGER_TIMEOUT",
                10_000,
                positive_ms,
            ),
            batch=setting(flags, env, "sink_batch", "METER_SINK_BATCH", 100, positive_int),
            backoff_ms=backoff,
            max_backoff_ms=max_backoff,
            start=setting(
                flags, env, "sink_start", "METER_SINK_START", StartPosition(), start_position
            ),
        )


def is_enabled(settings: SinkSettings) -> bool:
    """True when any sink besides the alerts topic is configured."""
    return settings.webhook_url is not None or settings.alertmanager_url is not None


SINK_FLAGS: tuple[tuple[str, str], ...] = (
    ("--webhook-url", "POST each alert to this URL (METER_WEBHOOK_URL)"),
    ("--webhook-secret", "HMAC-SHA256 key signing webhook bodies (METER_WEBHOOK_SECRET)"),
    ("--webhook-timeout", "timeout of one webhook request (METER_WEBHOOK_TIMEOUT, 10s)"),
    ("--alertmanager-url", "Alertmanager base URL (METER_ALERTMANAGER_URL)"),
    ("--alertmanager-resend", "re-send active alerts this often (METER_ALERTMANAGER_RESEND, 60s)"),
    (
        "--alertmanager-min-firing",
        "keep every alert firing at least this long (METER_ALERTMANAGER_MIN_FIRING, 5m)",
    ),
    ("--alertmanager-generator-url", "generatorURL of alerts (METER_ALERTMANAGER_GENERATOR_URL)"),
    ("--alertmanager-timeout", "timeout of one request (METER_ALERTMANAGER_TIMEOUT, 10s)"),
    ("--sink-batch", "alerts in flight per sink (METER_SINK_BATCH, 100)"),
    ("--sink-backoff", "first retry delay (METER_SINK_BACKOFF, 500ms)"),
    ("--sink-max-backoff", "longest retry delay (METER_SINK_MAX_BACKOFF, 30s)"),
    (
        "--sink-start",
        "a new sink starts at: earliest, latest or a duration back (METER_SINK_START, earliest)",
    ),
)


def add_sink_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sink flags to a command (all default to None: `SinkSettings.load` decides)."""
    group = parser.add_argument_group("alert sinks (besides the alerts topic)")
    for flag, help_text in SINK_FLAGS:
        group.add_argument(flag, help=help_text)

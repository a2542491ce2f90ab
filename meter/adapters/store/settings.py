"""Settings of `meter store`, declared as `meter.config.Option`s like the worker's
(`STORE_OPTIONS`).

Printing them never shows a password inside a database URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from meter.adapters.kafka_security import PLAINTEXT
from meter.config import (
    BOOTSTRAP,
    STALL_EXIT,
    STALL_TIMEOUT,
    Env,
    KafkaSecurity,
    Option,
    Values,
    default_state_dir,
    load,
    non_empty,
    positive_int,
    positive_ms,
)
from meter.worker_settings import WORKER_OPTIONS

POSTGRES_SCHEMES = ("postgresql", "postgres")
_PASSWORD_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*):[^@/]*@")


def database_url(text: str) -> str:
    """A `postgresql://` URL, or the path of an SQLite file (any other URL scheme is refused)."""
    value = non_empty(text)
    if "://" not in value:
        return value
    shown = redact_database(value)
    parts = urlsplit(value)
    if parts.scheme.lower() not in POSTGRES_SCHEMES:
        raise ValueError(f"{shown}: expected a file path (SQLite) or a postgresql:// URL")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"{shown}: the port is not a number from 0 to 65535") from None
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError(f"{shown}: the postgresql:// URL names no host")
    return value


def is_postgres(url: str) -> bool:
    return "://" in url and urlsplit(url).scheme.lower() in POSTGRES_SCHEMES


def redact_database(url: str) -> str:
    """The database URL with its password replaced by ***; a file path as it is."""
    return _PASSWORD_RE.sub(r"\1:***@", url)


def _default_database(values: Values, env: Env) -> str:
    return str(default_state_dir(env) / "meter.db")


def _worker_option(flag: str) -> Option:
    return next(o for o in WORKER_OPTIONS if o.flag == flag)


DATABASE = Option(
    "--database", _default_database, database_url,
    "SQLite file, or a `postgresql://` URL (put a password in the variable: flags show in `ps`)",
    "`var/meter.db`", secret=True,
)  # fmt: skip
"""Secret: a bad value is shown with its password redacted (by the parser), never as given."""
WINDOWS_TOPIC = _worker_option("--windows-topic")
ALERTS_TOPIC = _worker_option("--alerts-topic")

STORE_OPTIONS: tuple[Option, ...] = (
    DATABASE,
    BOOTSTRAP,
    WINDOWS_TOPIC,
    ALERTS_TOPIC,
    Option(
        "--group", "meter", non_empty,
        "the workers' group; the store's Kafka client id is `<group>-store`", "`meter`",
    ),
    Option(
        "--batch", 500, positive_int, "records per database transaction", "`500`",
        var="METER_STORE_BATCH",
    ),
    Option(
        "--connect-timeout", 60_000, positive_ms,
        "how long the store waits at start for Kafka and the database before it exits "
        "(status 69)", "`60s`", field="connect_timeout_ms",
    ),
    STALL_TIMEOUT,
    STALL_EXIT,
)  # fmt: skip
"""`meter store`: the topics it reads, the database it writes."""


@dataclass(frozen=True)
class StoreSettings:
    """Everything a `meter store` process needs (`STORE_OPTIONS`)."""

    database: str
    bootstrap: str | None = None
    windows_topic: str = "usage-windows"
    alerts_topic: str = "usage-alerts"
    group: str = "meter"
    batch: int = 500
    connect_timeout_ms: int = 60_000
    stall_timeout_ms: int = 120_000
    stall_exit_ms: int = 600_000
    kafka_security: KafkaSecurity = PLAINTEXT

    @property
    def client_id(self) -> str:
        return f"{self.group}-store"

    @property
    def postgres(self) -> bool:
        return is_postgres(self.database)

    @property
    def sqlite_path(self) -> Path:
        return Path(self.database)

    def __repr__(self) -> str:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["database"] = redact_database(self.database)
        return f"StoreSettings({', '.join(f'{k}={v!r}' for k, v in values.items())})"

    __str__ = __repr__

    @classmethod
    def load(cls, flags: Mapping[str, object | None], env: Env) -> StoreSettings:
        return cls(**load(STORE_OPTIONS, flags, env), kafka_security=KafkaSecurity.load(env))

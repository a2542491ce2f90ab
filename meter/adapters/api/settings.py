"""Settings of `meter api`, declared as `meter.config.Option`s like the worker's (`API_OPTIONS`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from meter.adapters.kafka_security import PLAINTEXT
from meter.adapters.store.settings import DATABASE, redact_database
from meter.config import (
    BOOTSTRAP,
    POLICY,
    STALL_EXIT,
    STALL_TIMEOUT,
    Env,
    KafkaSecurity,
    Option,
    load,
    non_empty,
    port_number,
    positive_ms,
    required_policy,
)
from meter.core.errors import ConfigError
from meter.worker_settings import WORKER_OPTIONS

QUOTA_TOPIC = next(o for o in WORKER_OPTIONS if o.flag == "--quota-topic")
HOST = Option(
    "--host", "127.0.0.1", non_empty,
    "bind address; anything but loopback needs `--tokens-file`", "`127.0.0.1`",
    var="METER_API_HOST",
)  # fmt: skip
TOKENS_FILE = Option(
    "--tokens-file", None, non_empty,
    "bearer tokens (admin, or read-only for one org; see *Security*)",
    "none: open, loopback only", var="METER_API_TOKENS_FILE",
)  # fmt: skip

PORT = Option("--port", 8080, port_number, "port of the API", "`8080`", var="METER_API_PORT")

API_OPTIONS: tuple[Option, ...] = (
    POLICY,
    BOOTSTRAP,
    QUOTA_TOPIC,
    DATABASE,
    HOST,
    PORT,
    TOKENS_FILE,
    Option(
        "--connect-timeout", 60_000, positive_ms,
        "how long it waits at start for Kafka to answer before it exits (status 69)", "`60s`",
        field="connect_timeout_ms",
    ),
    STALL_TIMEOUT,
    STALL_EXIT,
)  # fmt: skip
"""`meter api`: the feed it reads, the store it queries, where it listens, who may ask."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ApiSettings:
    """Everything a `meter api` process needs (`API_OPTIONS`)."""

    policy: Path
    database: str
    bootstrap: str | None = None
    quota_topic: str = "quota-state"
    host: str = "127.0.0.1"
    port: int = 8080
    tokens_file: Path | None = None
    connect_timeout_ms: int = 60_000
    stall_timeout_ms: int = 120_000
    stall_exit_ms: int = 600_000
    kafka_security: KafkaSecurity = PLAINTEXT

    def __repr__(self) -> str:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["database"] = redact_database(self.database)
        return f"ApiSettings({', '.join(f'{k}={v!r}' for k, v in values.items())})"

    __str__ = __repr__

    @classmethod
    def load(cls, flags: Mapping[str, object | None], env: Env) -> ApiSettings:
        values = load(API_OPTIONS, flags, env)
        values["policy"] = required_policy(values, "the same as the workers'")
        if values["tokens_file"] is not None:
            values["tokens_file"] = Path(values["tokens_file"])
        elif not is_loopback(values["host"]):
            raise ConfigError(
                TOKENS_FILE.label,
                f"required when the API listens on {values['host']} (not a loopback address): "
                "without tokens anyone who reaches it reads every organisation's usage",
            )
        return cls(**values, kafka_security=KafkaSecurity.load(env))

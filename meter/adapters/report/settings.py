"""Settings of `meter report` (`REPORT_OPTIONS`) and of statements served by `meter api`
(`STATEMENT_OPTIONS`), declared as `meter.config.Option`s. The horizons are the workers' own
settings (same flags and variables): they decide when a statement is final."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meter.adapters.store.settings import DATABASE
from meter.config import POLICY, Env, Option, load, required_policy
from meter.core.statement import Rules
from meter.worker_settings import WORKER_OPTIONS

__all__ = [
    "KEY_HINT",
    "REPORT_OPTIONS",
    "SIGN",
    "STATEMENT_KEY",
    "STATEMENT_OPTIONS",
    "ReportSettings",
    "StatementSettings",
    "key_spec",
]


KEY_HINT = "hmac:ENV_VAR (a shared key in that variable) or ed25519:KEYFILE (PEM)"


def key_spec(text: str) -> str:
    kind, _, where = text.strip().partition(":")
    if kind not in ("hmac", "ed25519") or not where:
        raise ValueError(f"expected {KEY_HINT}")
    return text.strip()


def _worker_option(flag: str) -> Option:
    return next(o for o in WORKER_OPTIONS if o.flag == flag)


GRACE = _worker_option("--grace")
LATE_HORIZON = _worker_option("--late-horizon")
HISTORY_HORIZON = _worker_option("--history-horizon")
SIGN = Option(
    "--sign",
    None,
    key_spec,
    "sign the statement: `hmac:ENV_VAR` (a shared key in that variable) or `ed25519:KEYFILE` "
    "(a PEM private key)",
    "not signed",
    var="METER_STATEMENT_KEY",
)
STATEMENT_KEY = Option(
    "--statement-key",
    None,
    key_spec,
    "sign the statements it issues: `hmac:ENV_VAR` or `ed25519:KEYFILE`",
    "not signed",
    var="METER_STATEMENT_KEY",
)

REPORT_OPTIONS: tuple[Option, ...] = (
    POLICY,
    DATABASE,
    SIGN,
    GRACE,
    LATE_HORIZON,
    HISTORY_HORIZON,
)
"""`meter report`: the policy and store it reads, the key it signs with, the workers' horizons."""
STATEMENT_OPTIONS: tuple[Option, ...] = (STATEMENT_KEY, GRACE, LATE_HORIZON, HISTORY_HORIZON)
"""`meter api`: how the statements it issues are signed, the workers' horizons."""


def _rules(values: Mapping[str, Any], top: int) -> Rules:
    return Rules(
        grace_ms=int(values["grace_ms"]),
        late_horizon_ms=int(values["late_horizon_ms"]),
        history_horizon_ms=int(values["history_horizon_ms"]),
        top=top,
    )


@dataclass(frozen=True)
class ReportSettings:
    policy: Path
    database: str
    sign: str | None
    rules: Rules

    @classmethod
    def load(cls, flags: Mapping[str, object | None], env: Env, top: int = 10) -> ReportSettings:
        values = load(REPORT_OPTIONS, flags, env)
        policy = required_policy(values, "the workers' policy")
        return cls(policy, values["database"], values["sign"], _rules(values, top))


@dataclass(frozen=True)
class StatementSettings:
    key: str | None
    rules: Rules

    @classmethod
    def load(cls, flags: Mapping[str, object | None], env: Env) -> StatementSettings:
        values = load(STATEMENT_OPTIONS, flags, env)
        return cls(values["statement_key"], _rules(values, 10))

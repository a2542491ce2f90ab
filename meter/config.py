"""Settings. Every option is declared once, as an `Option`: its flag, environment variable,
default, parser and help. The command line (`add_arguments`), the settings objects (`load`) and
the README's tables (`markdown_table`; `meter settings` prints them) derive from it. Here: the
`Option` itself, its parsers, the options several commands share and the Kafka security variables;
each command declares its own (`meter.worker_settings`, `meter.adapters.*.settings`).

A flag wins over its environment variable, which wins over the default. A bad value raises
`ConfigError` naming the flag and the variable.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meter.core.durations import parse_setting_duration
from meter.core.errors import ConfigError

_REPO_ROOT = Path(__file__).resolve().parents[1]

Values = Mapping[str, Any]
"""Settings loaded so far, by field name: what a default may depend on."""
Env = Mapping[str, str]


@dataclass(frozen=True)
class Option:
    """One setting: `--flag`, `METER_*` variable, default, parser, one line of help."""

    flag: str
    default: Any
    """A value, or a function of (the values loaded before it, the environment)."""
    parse: Callable[[str], Any]
    help: str
    shown: str
    """The default as people read it: `60s`, `<input>.dlq`, `(required)`."""
    field: str = ""
    """The settings object's attribute (default: the flag's name)."""
    var: str = ""
    """The environment variable (default: METER_ and the flag's name)."""
    secret: bool = False
    """Never shown: give it by variable (flags show in `ps`)."""

    def __post_init__(self) -> None:
        stem = self.flag.removeprefix("--").replace("-", "_")
        if not self.field:
            object.__setattr__(self, "field", stem)
        if not self.var:
            object.__setattr__(self, "var", f"METER_{stem.upper()}")

    @property
    def dest(self) -> str:
        """The argparse destination of the flag."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def label(self) -> str:
        return f"{self.flag} / {self.var}" if self.flag else self.var

    def value(self, flags: Mapping[str, object | None], env: Env, loaded: Values) -> Any:
        raw = flags.get(self.dest)
        if raw is None:
            raw = env.get(self.var)
            if raw is None or raw == "":
                return self.default(loaded, env) if callable(self.default) else self.default
        try:
            return self.parse(str(raw))
        except (ValueError, TypeError) as exc:
            shown = "***" if self.secret else repr(raw)
            raise ConfigError(self.label, f"invalid value {shown}: {exc}") from exc


def load(options: Sequence[Option], flags: Mapping[str, object | None], env: Env) -> dict[str, Any]:
    """The value of every option, by field name, in declaration order."""
    values: dict[str, Any] = {}
    for option in options:
        values[option.field] = option.value(flags, env, values)
    return values


def add_arguments(parser: argparse.ArgumentParser | Any, options: Sequence[Option]) -> None:
    """Add the options' flags to a parser or argument group; all default to None (`load`
    decides), so an unset flag lets the environment variable through."""
    for option in options:
        parser.add_argument(option.flag, help=f"{option.help} ({option.var}, {option.shown})")


def markdown_table(options: Sequence[Option]) -> str:
    rows = ["| flag | variable | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{o.flag}` | `{o.var}` | {o.shown} | {o.help} |" for o in options]
    return "\n".join(rows)


def variables_table(options: Sequence[Option]) -> str:
    """The table of settings that have a variable only (no flag)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{o.var}` | {o.shown} | {o.help} |" for o in options]
    return "\n".join(rows)


# -- parsers -------------------------------------------------------------------------------------
def port_number(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError("a port is between 1 and 65535")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def duration_ms(text: str) -> int:
    """A duration (`meter.core.durations`: 500ms, 90s, 15m, 1h, 1d, 2h30m, or whole seconds)."""
    return parse_setting_duration(text)


def positive_ms(text: str) -> int:
    value = duration_ms(text)
    if value <= 0:
        raise ValueError("must be longer than zero")
    return value


def non_negative_ms(text: str) -> int:
    value = duration_ms(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def session_timeout_ms(text: str) -> int:
    """A consumer group session timeout: within the broker's default bounds (6 s to 30 min)."""
    value = duration_ms(text)
    if not 6_000 <= value <= 1_800_000:
        raise ValueError("must be between 6s and 30m (the broker's group session bounds)")
    return value


def store_url(text: str) -> str:
    value = text.strip().lower()
    if value not in {"rocksdb", "memory"}:
        raise ValueError("must be 'rocksdb' or 'memory'")
    return value


def default_state_dir(env: Env) -> Path:
    """Runtime files (broker data, worker state) live under `var/` in the checkout by default."""
    return Path(env.get("METER_STATE_DIR") or _REPO_ROOT / "var")


# -- options shared by several commands ------------------------------------------------------
POLICY = Option("--policy", None, non_empty, "policy YAML file", "(required)")
BOOTSTRAP = Option(
    "--bootstrap", None, non_empty, "Kafka bootstrap servers", "local broker if running",
    var="METER_KAFKA_BOOTSTRAP",
)  # fmt: skip
INPUT_TOPIC = Option("--input-topic", "api-calls", non_empty, "input topic", "`api-calls`")
WEB_PORT = Option("--web-port", 6066, port_number, "port of `/metrics`", "`6066`")
STALL_TIMEOUT = Option(
    "--stall-timeout", 120_000, positive_ms,
    "a Kafka consumer with records waiting that has not moved for this long is reported stalled "
    "(`meter_stalled`, `/readyz`)", "`2m`", field="stall_timeout_ms",
)  # fmt: skip
STALL_EXIT = Option(
    "--stall-exit", 600_000, non_negative_ms,
    "a consumer stalled this long while Kafka answers makes the process exit (status 75) for "
    "its supervisor to restart it; `0`: never", "`10m`", field="stall_exit_ms",
)  # fmt: skip
"""The progress watchdog (`meter.adapters.watchdog`), the same for workers, store and API."""


def required_policy(values: Values, whose: str = "") -> Path:
    """The `--policy` value loaded into `values`, as a path; a `ConfigError` naming the option
    when it is missing (`whose` says which policy is meant)."""
    if values["policy"] is None:
        why = f" ({whose})" if whose else ""
        raise ConfigError(POLICY.label, f"a policy file is required{why}")
    return Path(values["policy"])


# -- Kafka security: the same variables for every process, never flags (flags show in `ps`) ------
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


def _one_of(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().upper()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value

    return parse


def readable_file(text: str) -> Path:
    path = Path(text.strip())
    if not path.is_file():
        raise ValueError("no such file")
    return path


def _env_only(
    var: str,
    field: str,
    default: Any,
    parse: Callable[[str], Any],
    help_: str,
    shown: str,
    *,
    secret: bool = False,
) -> Option:
    return Option("", default, parse, help_, shown, field=field, var=var, secret=secret)


KAFKA_SECURITY_OPTIONS: tuple[Option, ...] = (
    _env_only("METER_KAFKA_USERNAME", "username", None, non_empty, "SASL user name", "none"),
    _env_only(
        "METER_KAFKA_SECURITY_PROTOCOL", "protocol",
        lambda v, _: "SASL_SSL" if v["username"] else "PLAINTEXT", _one_of(KAFKA_PROTOCOLS),
        "`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`",
        "`SASL_SSL` with a user name, else `PLAINTEXT`",
    ),
    _env_only(
        "METER_KAFKA_SASL_MECHANISM", "mechanism", "SCRAM-SHA-512", _one_of(SASL_MECHANISMS),
        "`SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN`", "`SCRAM-SHA-512`",
    ),
    _env_only(
        "METER_KAFKA_PASSWORD", "password", None, str,
        "SASL password (or the file below; never shown)", "none", secret=True,
    ),
    _env_only(
        "METER_KAFKA_PASSWORD_FILE", "password_file", None, readable_file,
        "file holding the SASL password on one line (keep it mode 0600)", "none",
    ),
    _env_only(
        "METER_KAFKA_CA_FILE", "ca_file", None, readable_file,
        "PEM file of the CA(s) that signed the brokers' certificates", "the system's CAs",
    ),
)  # fmt: skip
"""How every meter process connects to Kafka (`KafkaSecurity.load`): variables only, no flags
(a flag shows in `ps`); the same for the worker, store, API, simulator and demo."""


@dataclass(frozen=True)
class KafkaSecurity:
    """TLS and SASL settings of every Kafka client of a process; `meter.adapters.kafka_security`
    turns them into each client library's arguments. Printing one never shows the password."""

    protocol: str = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def describe(self) -> str:
        """For log lines: `SASL_SSL (SCRAM-SHA-512) as meter`, or `PLAINTEXT`."""
        if not self.sasl:
            return self.protocol
        return f"{self.protocol} ({self.mechanism}) as {self.username}"

    def __repr__(self) -> str:
        password = None if self.password is None else "***"
        return (
            f"KafkaSecurity(protocol={self.protocol!r}, mechanism={self.mechanism!r}, "
            f"username={self.username!r}, password={password!r}, ca_file={self.ca_file!r})"
        )

    __str__ = __repr__

    @classmethod
    def load(cls, env: Env) -> KafkaSecurity:
        """From `METER_KAFKA_*` variables; a missing or contradictory one raises `ConfigError`
        naming it (never showing a password)."""
        values = load(KAFKA_SECURITY_OPTIONS, {}, env)
        var = {o.field: o.var for o in KAFKA_SECURITY_OPTIONS}
        protocol, password_file = values["protocol"], values.pop("password_file")
        if password_file is not None:
            if values["password"] is not None:
                raise ConfigError(var["password"], f"set it or {var['password_file']}, not both")
            values["password"] = _read_password(password_file, var["password_file"])
        sasl = protocol.startswith("SASL_")
        for name in ("username", "password"):
            if sasl and values[name] is None:
                also = f" or {var['password_file']}" if name == "password" else ""
                raise ConfigError(var[name] + also, f"required with {protocol}")
            if not sasl and values[name] is not None:
                raise ConfigError(var[name], f"needs a SASL protocol, not {protocol}")
        if values["ca_file"] is not None and protocol not in ("SSL", "SASL_SSL"):
            raise ConfigError(var["ca_file"], f"needs SSL or SASL_SSL, not {protocol}")
        return cls(**values)


def kafka_secrets(env: Env) -> list[str]:
    """The Kafka password as configured (by value or file), for the log to hide; nothing when it
    cannot be read (the command that needs it says why)."""
    found = [env.get("METER_KAFKA_PASSWORD", "")]
    with contextlib.suppress(ConfigError):
        if env.get("METER_KAFKA_PASSWORD_FILE"):
            path = Path(env["METER_KAFKA_PASSWORD_FILE"])
            found.append(_read_password(path, "METER_KAFKA_PASSWORD_FILE"))
    return [s for s in found if s]


def _read_password(path: Path, label: str) -> str:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(label, f"cannot read {path}: {type(exc).__name__}") from None
    password = text.removesuffix("\n").removesuffix("\r")
    if not password or "\n" in password:
        raise ConfigError(label, f"{path} must hold the password on one line")
    return password

"""Settings. Every option is declared once, as an `Option`: its flag, environment variable,
default, parser and help. The command line (`add_arguments`), the settings objects (`load`) and
the README's tables (`markdown_table`; `meter settings` prints them) derive from it.

A flag wins over its environment variable, which wins over the default. A bad value raises
`ConfigError` naming the flag and the variable.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meter.core.durations import DAY_MS, parse_setting_duration
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
        return f"{self.flag} / {self.var}"

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


def _data_dir(values: Values, env: Env) -> Path:
    return default_state_dir(env) / "worker" / f"{values['group']}-{values['web_port']}"


WORKER_OPTIONS: tuple[Option, ...] = (
    POLICY,
    BOOTSTRAP,
    INPUT_TOPIC,
    Option(
        "--dlq-topic", lambda v, _: f"{v['input_topic']}.dlq", non_empty, "dead-letter topic",
        "`<input>.dlq`",
    ),
    Option("--alerts-topic", "usage-alerts", non_empty, "alerts topic", "`usage-alerts`"),
    Option("--windows-topic", "usage-windows", non_empty, "window totals topic", "`usage-windows`"),
    Option(
        "--quota-topic", "quota-state", non_empty,
        "compacted quota feed for gateways (*Quota feed*)", "`quota-state`",
    ),
    Option(
        "--quota-interval", 1_000, positive_ms,
        "while a cap's usage only moves, its feed record is updated at most once per this; "
        "state changes and new windows go out at once", "`1s`", field="quota_interval_ms",
    ),
    Option(
        "--group", "meter", non_empty,
        "consumer group, faust app id, prefix of internal topics", "`meter`",
    ),
    Option(
        "--partitions", 4, positive_int,
        "partitions of the topics it creates; must match `<group>-routed`", "`4`",
    ),
    Option(
        "--grace", 60_000, duration_ms, "event-time grace before a window closes", "`60s`",
        field="grace_ms",
    ),
    Option(
        "--session-timeout", 60_000, session_timeout_ms,
        "how long a worker that stopped answering (killed, frozen) keeps its partitions; "
        "6s to 30m", "`60s`", field="session_timeout_ms",
    ),
    Option(
        "--dedup-horizon", 3_600_000, duration_ms,
        "how long event ids are remembered, in ingest time (see *Dedup horizon*)", "`1h`",
        field="dedup_horizon_ms",
    ),
    Option(
        "--late-horizon", DAY_MS, duration_ms,
        "how long closed windows keep every breakdown (late events re-publish all figures)",
        "`1d`", field="late_horizon_ms",
    ),
    Option(
        "--history-horizon", 35 * DAY_MS, duration_ms,
        "how long after that compact totals are kept; older events are dead-lettered "
        "(`too_late`)", "`35d`", field="history_horizon_ms",
    ),
    Option(
        "--idle-timeout", 30_000, duration_ms,
        "an input partition read to its end without events for this long stops holding back "
        "event time; when all are idle, windows close on the clock", "`30s`",
        field="idle_timeout_ms",
    ),
    Option(
        "--max-future-skew", 300_000, duration_ms,
        "events dated further ahead of their arrival in Kafka are dead-lettered "
        "(`future_time`)", "`5m`", field="max_future_skew_ms",
    ),
    Option(
        "--store", "rocksdb", store_url,
        "`rocksdb`, or `memory` (replays the changelog at start)", "`rocksdb`",
    ),
    Option("--web-host", "127.0.0.1", non_empty, "bind address of `/metrics`", "`127.0.0.1`"),
    WEB_PORT,
    Option(
        "--data-dir", _data_dir, Path, "RocksDB state; one per worker process",
        "`var/worker/<group>-<port>`",
    ),
    Option(
        "--tick", 1_000, positive_ms,
        "how often routers report progress when no batch does (also retries unsent outputs)",
        "`1s`", field="tick_ms",
    ),
    Option(
        "--metrics-max-apps", 100, positive_int, "apps with their own cap series", "`100`",
    ),
    Option("--replication", 1, positive_int, "replication factor of topics it creates", "`1`"),
    Option(
        "--connect-timeout", 60_000, positive_ms,
        "how long a worker waits at start for Kafka to answer before it exits (status 69)",
        "`60s`", field="connect_timeout_ms",
    ),
)  # fmt: skip


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a `meter worker` process needs (`WORKER_OPTIONS`)."""

    policy: Path
    bootstrap: str | None
    input_topic: str = "api-calls"
    dlq_topic: str = "api-calls.dlq"
    alerts_topic: str = "usage-alerts"
    windows_topic: str = "usage-windows"
    quota_topic: str = "quota-state"
    quota_interval_ms: int = 1_000
    group: str = "meter"
    partitions: int = 4
    grace_ms: int = 60_000
    session_timeout_ms: int = 60_000
    dedup_horizon_ms: int = 3_600_000
    late_horizon_ms: int = DAY_MS
    history_horizon_ms: int = 35 * DAY_MS
    idle_timeout_ms: int = 30_000
    max_future_skew_ms: int = 300_000
    store: str = "rocksdb"
    data_dir: Path = Path("var/worker")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    tick_ms: int = 1_000
    metrics_max_apps: int = 100
    replication: int = 1
    connect_timeout_ms: int = 60_000

    @property
    def routed_topic(self) -> str:
        return f"{self.group}-routed"

    @property
    def router_group(self) -> str:
        """The router's consumer group (the counters use `group` itself)."""
        return f"{self.group}-router"

    @property
    def heartbeat_interval_ms(self) -> int:
        """Group heartbeats well inside the session timeout: a tenth of it, at most 3 s."""
        return min(3_000, self.session_timeout_ms // 10)

    @property
    def changelog_topic(self) -> str:
        """faust names a table's changelog `<app id>-<table>-changelog`; the table is "ledger"."""
        return f"{self.group}-ledger-changelog"

    @classmethod
    def load(cls, flags: Mapping[str, object | None], env: Env) -> WorkerSettings:
        values = load(WORKER_OPTIONS, flags, env)
        if values["policy"] is None:
            raise ConfigError(POLICY.label, "a policy file is required")
        values["policy"] = Path(values["policy"])
        return cls(**values)

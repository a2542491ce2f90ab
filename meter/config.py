"""Settings: frozen dataclasses read from CLI flags and an injectable environment (`METER_*`).

A flag wins over its environment variable, which wins over the default. A bad value raises
`ConfigError` naming the flag and the variable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from meter.core.errors import ConfigError

T = TypeVar("T")

_REPO_ROOT = Path(__file__).resolve().parents[1]


def setting(
    flags: Mapping[str, object | None],
    env: Mapping[str, str],
    name: str,
    var: str,
    default: T,
    convert: Callable[[str], T],
) -> T:
    """The value of setting `name`: flag `--name`, else `$var`, else `default`."""
    raw = flags.get(name)
    label = f"--{name.replace('_', '-')} / {var}"
    if raw is None:
        raw = env.get(var)
        if raw is None or raw == "":
            return default
    try:
        return convert(str(raw))
    except (ValueError, TypeError) as exc:
        raise ConfigError(label, f"invalid value {raw!r}: {exc}") from exc


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


def default_state_dir(env: Mapping[str, str]) -> Path:
    """Runtime files (broker data, worker state) live under `var/` in the checkout by default."""
    return Path(env.get("METER_STATE_DIR") or _REPO_ROOT / "var")


@dataclass(frozen=True)
class BrokerSettings:
    """Where the local development broker's Maven project is, where its data goes, its ports."""

    home: Path
    state: Path
    port: int = 9092
    controller_port: int = 9093
    host: str = "127.0.0.1"

    @classmethod
    def load(cls, flags: Mapping[str, object | None], env: Mapping[str, str]) -> BrokerSettings:
        home = setting(
            flags, env, "kafka_home", "METER_KAFKA_HOME", _REPO_ROOT / "deploy/kafka", Path
        )
        state = default_state_dir(env) / "kafka"
        port = setting(flags, env, "port", "METER_KAFKA_PORT", 9092, port_number)
        cport = setting(
            flags, env, "controller_port", "METER_KAFKA_CONTROLLER_PORT", port + 1, port_number
        )
        if cport == port:
            raise ConfigError(
                "--controller-port / METER_KAFKA_CONTROLLER_PORT",
                f"must differ from the broker port {port}",
            )
        return cls(home=home, state=state, port=port, controller_port=cport)


@dataclass(frozen=True)
class KafkaSettings:
    """How workers and tools reach Kafka. An empty bootstrap means: use the local broker."""

    bootstrap: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, flags: Mapping[str, object | None], env: Mapping[str, str]) -> KafkaSettings:
        bootstrap = setting(flags, env, "bootstrap", "METER_KAFKA_BOOTSTRAP", None, non_empty)
        return cls(bootstrap=bootstrap)


def duration_ms(text: str) -> int:
    """ "90s", "15m", "1h", "1d", "500ms" or a number of seconds."""
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    t = text.strip().lower()
    for suffix in ("ms", "s", "m", "h", "d"):
        if t.endswith(suffix) and t[: -len(suffix)].strip().isdigit():
            return int(t[: -len(suffix)]) * units[suffix]
    if t.isdigit():
        return int(t) * 1000
    raise ValueError("expected a duration such as 90s, 15m, 1h or 1d")


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


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a `meter worker` process needs; see the README's configuration table."""

    policy: Path
    bootstrap: str | None
    input_topic: str = "api-calls"
    dlq_topic: str = "api-calls.dlq"
    alerts_topic: str = "usage-alerts"
    windows_topic: str = "usage-windows"
    group: str = "meter"
    partitions: int = 4
    grace_ms: int = 60_000
    dedup_horizon_ms: int = 3_600_000
    late_horizon_ms: int = 86_400_000
    history_horizon_ms: int = 35 * 86_400_000
    idle_timeout_ms: int = 30_000
    """An input partition read to its end without events for this long no longer holds back
    the watermark; when all are idle, windows close on the wall clock."""
    max_future_skew_ms: int = 300_000
    """Events dated further ahead of their arrival in Kafka are dead-lettered (future_time)."""
    store: str = "rocksdb"
    data_dir: Path = Path("var/worker")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    tick_ms: int = 1_000
    """How often routers report progress when nothing else moves."""
    metrics_max_apps: int = 100
    replication: int = 1
    session_timeout_ms: int = 60_000
    """How long a worker that stopped answering (killed, frozen) keeps its partitions."""

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
    def load(cls, flags: Mapping[str, object | None], env: Mapping[str, str]) -> WorkerSettings:
        policy = setting(flags, env, "policy", "METER_POLICY", None, non_empty)
        if policy is None:
            raise ConfigError("--policy / METER_POLICY", "a policy file is required")
        input_topic = setting(
            flags, env, "input_topic", "METER_INPUT_TOPIC", "api-calls", non_empty
        )
        group = setting(flags, env, "group", "METER_GROUP", "meter", non_empty)
        web_port = setting(flags, env, "web_port", "METER_WEB_PORT", 6066, port_number)
        default_data = default_state_dir(env) / "worker" / f"{group}-{web_port}"
        return cls(
            policy=Path(policy),
            bootstrap=setting(flags, env, "bootstrap", "METER_KAFKA_BOOTSTRAP", None, non_empty),
            input_topic=input_topic,
            dlq_topic=setting(
                flags, env, "dlq_topic", "METER_DLQ_TOPIC", f"{input_topic}.dlq", non_empty
            ),
            alerts_topic=setting(
                flags, env, "alerts_topic", "METER_ALERTS_TOPIC", "usage-alerts", non_empty
            ),
            windows_topic=setting(
                flags, env, "windows_topic", "METER_WINDOWS_TOPIC", "usage-windows", non_empty
            ),
            group=group,
            partitions=setting(flags, env, "partitions", "METER_PARTITIONS", 4, positive_int),
            grace_ms=setting(flags, env, "grace", "METER_GRACE", 60_000, duration_ms),
            dedup_horizon_ms=setting(
                flags, env, "dedup_horizon", "METER_DEDUP_HORIZON", 3_600_000, duration_ms
            ),
            late_horizon_ms=setting(
                flags, env, "late_horizon", "METER_LATE_HORIZON", 86_400_000, duration_ms
            ),
            history_horizon_ms=setting(
                flags, env, "history_horizon", "METER_HISTORY_HORIZON", 35 * 86_400_000, duration_ms
            ),
            idle_timeout_ms=setting(
                flags, env, "idle_timeout", "METER_IDLE_TIMEOUT", 30_000, duration_ms
            ),
            max_future_skew_ms=setting(
                flags, env, "max_future_skew", "METER_MAX_FUTURE_SKEW", 300_000, duration_ms
            ),
            store=setting(flags, env, "store", "METER_STORE", "rocksdb", store_url),
            data_dir=setting(flags, env, "data_dir", "METER_DATA_DIR", default_data, Path),
            web_host=setting(flags, env, "web_host", "METER_WEB_HOST", "127.0.0.1", non_empty),
            web_port=web_port,
            tick_ms=setting(flags, env, "tick", "METER_TICK", 1_000, duration_ms),
            metrics_max_apps=setting(
                flags, env, "metrics_max_apps", "METER_METRICS_MAX_APPS", 100, positive_int
            ),
            replication=setting(flags, env, "replication", "METER_REPLICATION", 1, positive_int),
            session_timeout_ms=setting(
                flags, env, "session_timeout", "METER_SESSION_TIMEOUT", 60_000, session_timeout_ms
            ),
        )

"""The settings of `meter worker` (`WORKER_OPTIONS`), declared as `meter.config.Option`s, and
`WorkerSettings`, what a worker process reads them into."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meter.config import (
    BOOTSTRAP,
    INPUT_TOPIC,
    POLICY,
    STALL_EXIT,
    STALL_TIMEOUT,
    WEB_PORT,
    Env,
    KafkaSecurity,
    Option,
    Values,
    default_state_dir,
    duration_ms,
    load,
    non_empty,
    positive_int,
    positive_ms,
    required_policy,
    session_timeout_ms,
    store_url,
)
from meter.core.durations import DAY_MS


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
    Option(
        "--max-unknown-apps", 10_000, positive_int,
        "unknown apps counted under their own id per routed partition per UTC month; later ones "
        "are counted together as app `*` (see *Alerts*)", "`10000`",
    ),
    Option(
        "--unknown-app-alerts", 100, positive_int,
        "`unknown_app` alerts per routed partition per UTC day; past them, one "
        "`unknown_app_flood` alert for the partition and day, and no more (see *Alerts*)", "`100`",
    ),
    Option(
        "--replication", None, positive_int,
        "replication factor of topics it creates (3 or more: also `min.insync.replicas=2`)",
        "the broker's `default.replication.factor`",
    ),
    STALL_TIMEOUT,
    STALL_EXIT,
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
    unknown_app_alerts: int = 100
    max_unknown_apps: int = 10_000
    replication: int | None = None
    """None: the broker's default (and its `min.insync.replicas`)."""
    stall_timeout_ms: int = 120_000
    stall_exit_ms: int = 600_000
    connect_timeout_ms: int = 60_000
    kafka_security: KafkaSecurity = KafkaSecurity()  # noqa: RUF009 - frozen: one shared default
    """How its Kafka clients connect (`METER_KAFKA_*` variables; see `KAFKA_SECURITY_OPTIONS`)."""

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
        values["policy"] = required_policy(values)
        return cls(**values, kafka_security=KafkaSecurity.load(env))

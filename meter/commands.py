"""Sub-commands beyond the broker: `worker` and `policy check`. faust is imported lazily here so
that `meter kafka` and `meter policy` stay light."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping

from meter.adapters.broker import port_open
from meter.adapters.policy_file import read_policy
from meter.adapters.sinks.settings import SinkSettings, add_sink_arguments
from meter.config import BrokerSettings, WorkerSettings
from meter.core.errors import ConfigError
from meter.demo import add_demo_parser
from meter.sim.command import add_simulate_parser

log = logging.getLogger("meter")

DAY_MS = 86_400_000


def resolve_bootstrap(configured: str | None, env: Mapping[str, str]) -> str:
    """The configured bootstrap servers, or the local broker when it is running."""
    if configured:
        return configured
    local = BrokerSettings.load({}, env)
    address = f"{local.host}:{local.port}"
    if port_open(local.host, local.port):
        log.info("no Kafka configured: using the local broker at %s", address)
        return address
    raise ConfigError(
        "--bootstrap / METER_KAFKA_BOOTSTRAP",
        f"no Kafka configured and no local broker at {address}; set it, or run `meter kafka start`",
    )


def cmd_policy(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    policy = read_policy(args.file)
    print(f"{args.file}: OK")
    print(policy.describe())
    return 0


def cmd_worker(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from meter.adapters.runner import run_worker  # noqa: PLC0415 - imports faust

    settings = WorkerSettings.load(vars(args), env)
    sinks = SinkSettings.load(vars(args), env)
    policy = read_policy(settings.policy)
    bootstrap = resolve_bootstrap(settings.bootstrap, env)
    return run_worker(settings, policy, bootstrap, verbose=bool(args.verbose), sinks=sinks)


def _add_worker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker",
        help="run a metering worker (several processes with one --group share the work)",
        description="Consume API-call events, count them per app and organisation, publish "
        "alerts and window totals. Stops cleanly on SIGTERM or Ctrl-C.",
    )
    add = p.add_argument
    add("--policy", help="policy YAML file (METER_POLICY)")
    add("--bootstrap", help="Kafka bootstrap servers (METER_KAFKA_BOOTSTRAP)")
    add("--input-topic", help="input topic (METER_INPUT_TOPIC, api-calls)")
    add("--dlq-topic", help="dead-letter topic (METER_DLQ_TOPIC, <input>.dlq)")
    add("--alerts-topic", help="alerts topic (METER_ALERTS_TOPIC, usage-alerts)")
    add("--windows-topic", help="window totals topic (METER_WINDOWS_TOPIC, usage-windows)")
    add("--group", help="consumer group and app id (METER_GROUP, meter)")
    add("--partitions", help="partitions of topics it creates (METER_PARTITIONS, 4)")
    add("--grace", help="event-time grace before a window closes (METER_GRACE, 60s)")
    add(
        "--dedup-horizon",
        help="how long event ids are remembered, in ingest time (METER_DEDUP_HORIZON, 1h)",
    )
    add(
        "--late-horizon",
        help="how long closed windows keep every breakdown (METER_LATE_HORIZON, 1d)",
    )
    add(
        "--history-horizon",
        help="how long after that their totals are kept; older events are dead-lettered "
        "(METER_HISTORY_HORIZON, 35d)",
    )
    add(
        "--idle-timeout",
        help="an input partition read to its end without events for this long stops holding "
        "back event time (METER_IDLE_TIMEOUT, 30s)",
    )
    add(
        "--max-future-skew",
        help="events dated further ahead of their arrival are dead-lettered "
        "(METER_MAX_FUTURE_SKEW, 5m)",
    )
    add("--store", help="state store: rocksdb or memory (METER_STORE, rocksdb)")
    add("--data-dir", help="state directory (METER_DATA_DIR, var/worker/<group>-<port>)")
    add("--web-host", help="metrics/HTTP bind address (METER_WEB_HOST, 127.0.0.1)")
    add("--web-port", help="metrics/HTTP port (METER_WEB_PORT, 6066)")
    add("--tick", help="progress reports when nothing else moves (METER_TICK, 1s)")
    add("--replication", help="replication factor of topics it creates (METER_REPLICATION, 1)")
    add(
        "--session-timeout",
        help="how long a worker that stopped answering keeps its partitions (METER_SESSION_TIMEOUT,"
        " 60s; 6s to 30m)",
    )
    add("--metrics-max-apps", help="apps with their own cap series (METER_METRICS_MAX_APPS, 100)")
    add_sink_arguments(p)
    p.set_defaults(handler=cmd_worker)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the worker and policy commands to the `meter` parser."""
    _add_worker(sub)
    pol = sub.add_parser("policy", help="work with policy files")
    pol_sub = pol.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = pol_sub.add_parser("check", help="validate a policy file and print its effective caps")
    check.add_argument("file")
    check.set_defaults(handler=cmd_policy)
    add_simulate_parser(sub)
    add_demo_parser(sub)

"""Sub-commands beyond the broker: `worker` and `policy check`. faust is imported lazily here so
that `meter kafka` and `meter policy` stay light."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping

from meter.adapters.broker import BROKER_OPTIONS, kafka_bootstrap
from meter.adapters.policy_file import read_policy
from meter.adapters.sinks.settings import SINK_OPTIONS, SinkSettings, add_sink_arguments
from meter.adapters.store.settings import STORE_OPTIONS, StoreSettings
from meter.config import WORKER_OPTIONS, WorkerSettings, add_arguments, markdown_table
from meter.demo import add_demo_parser
from meter.sim.command import add_simulate_parser

log = logging.getLogger("meter")


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
    bootstrap = kafka_bootstrap(settings.bootstrap, env)
    return run_worker(settings, policy, bootstrap, verbose=bool(args.verbose), sinks=sinks)


def cmd_store(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from meter.adapters.store.service import run_store  # noqa: PLC0415 - imports the clients

    settings = StoreSettings.load(vars(args), env)
    return run_store(settings, kafka_bootstrap(settings.bootstrap, env))


def cmd_settings(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Every setting with its flag, variable and default, as the README's tables."""
    for title, options in (
        ("meter worker", WORKER_OPTIONS),
        ("alert sinks (meter worker)", SINK_OPTIONS),
        ("meter store", STORE_OPTIONS),
        ("meter kafka", BROKER_OPTIONS),
    ):
        print(f"### {title}\n\n{markdown_table(options)}\n")
    return 0


def _add_worker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker",
        help="run a metering worker (several processes with one --group share the work)",
        description="Consume API-call events, count them per app and organisation, publish "
        "alerts and window totals. Stops cleanly on SIGTERM or Ctrl-C.",
    )
    add_arguments(p, WORKER_OPTIONS)
    add_sink_arguments(p)
    p.set_defaults(handler=cmd_worker)


def _add_store(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "store",
        help="store window totals and alerts in SQLite or PostgreSQL, exactly once",
        description="Read the window totals and alerts topics into a database (SQLite file or "
        "postgresql:// URL) for the API and reports. Stops cleanly on SIGTERM or Ctrl-C.",
    )
    add_arguments(p, STORE_OPTIONS)
    p.set_defaults(handler=cmd_store)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the worker and policy commands to the `meter` parser."""
    _add_worker(sub)
    _add_store(sub)
    pol = sub.add_parser("policy", help="work with policy files")
    pol_sub = pol.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = pol_sub.add_parser("check", help="validate a policy file and print its effective caps")
    check.add_argument("file")
    check.set_defaults(handler=cmd_policy)
    add_simulate_parser(sub)
    add_demo_parser(sub)
    settings = sub.add_parser("settings", help="print every setting: flag, variable, default")
    settings.set_defaults(handler=cmd_settings)

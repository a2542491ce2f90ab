"""Sub-commands beyond the broker: `worker`, `store`, `api`, `report`, `policy check`, `settings`.
faust and the clients are imported lazily here so that `meter kafka` and `meter policy` stay
light."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping

from meter.adapters.api.settings import API_OPTIONS, ApiSettings
from meter.adapters.broker import BROKER_OPTIONS, kafka_bootstrap
from meter.adapters.policy_file import read_policy
from meter.adapters.report.arguments import add_report_parser
from meter.adapters.report.settings import REPORT_OPTIONS, STATEMENT_OPTIONS, StatementSettings
from meter.adapters.sinks.settings import SINK_OPTIONS, SinkSettings, add_sink_arguments
from meter.adapters.store.settings import STORE_OPTIONS, StoreSettings
from meter.config import KAFKA_SECURITY_OPTIONS, add_arguments, markdown_table, variables_table
from meter.demo import add_demo_parser
from meter.sim.command import add_simulate_parser
from meter.worker_settings import WORKER_OPTIONS, WorkerSettings

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
    bootstrap = kafka_bootstrap(settings.bootstrap, env)
    return run_store(settings, bootstrap, verbose=bool(args.verbose))


def cmd_api(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from meter.adapters.api.runner import run_api  # noqa: PLC0415 - imports the clients
    from meter.adapters.report.service import Issuer  # noqa: PLC0415

    settings = ApiSettings.load(vars(args), env)
    statements = Issuer.load(StatementSettings.load(vars(args), env), env)
    policy = read_policy(settings.policy)
    bootstrap = kafka_bootstrap(settings.bootstrap, env)
    return run_api(settings, policy, bootstrap, statements, verbose=bool(args.verbose))


def cmd_api_token(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Make a bearer token: printed once, with the line that adds its digest to a tokens file."""
    from meter.adapters.api.auth import digest, new_token, parse_scope  # noqa: PLC0415

    parse_scope(args.scope, "--scope")
    token = new_token()
    print(f"token (shown once; give it to its holder): {token}")
    print("add to the tokens file (--tokens-file / METER_API_TOKENS_FILE):")
    print(f'  - {{name: {args.name}, scope: "{args.scope}", sha256: {digest(token)}}}')
    return 0


def cmd_report(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from meter.adapters.report.command import run_report  # noqa: PLC0415 - imports the clients

    return run_report(args, env, print, sys.stdout.buffer.write)


def cmd_report_verify(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from meter.adapters.report.command import run_verify  # noqa: PLC0415 - imports the clients

    return run_verify(args, env, print)


def cmd_settings(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Every setting with its flag, variable and default, as the README's tables."""
    for title, options in (
        ("meter worker", WORKER_OPTIONS),
        ("alert sinks (meter worker)", SINK_OPTIONS),
        ("meter store", STORE_OPTIONS),
        ("meter api", API_OPTIONS),
        ("statements (meter api)", STATEMENT_OPTIONS),
        ("meter report", REPORT_OPTIONS),
        ("meter kafka", BROKER_OPTIONS),
    ):
        print(f"### {title}\n\n{markdown_table(options)}\n")
    print("### Kafka security (every command; variables only)\n")
    print(f"{variables_table(KAFKA_SECURITY_OPTIONS)}\n")
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


def _add_api(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "api",
        help="serve current usage, checks for gateways and usage history over HTTP",
        description="Serve the HTTP API: current usage and the check endpoint from the quota "
        "feed, history and alerts from the usage store. Stops cleanly on SIGTERM or Ctrl-C. "
        "`meter api token` makes a bearer token.",
    )
    add_arguments(p, API_OPTIONS)
    add_arguments(p.add_argument_group("statements"), STATEMENT_OPTIONS)
    p.set_defaults(handler=cmd_api)
    actions = p.add_subparsers(dest="api_command", metavar="ACTION")
    token = actions.add_parser("token", help="make a bearer token for the tokens file")
    token.add_argument("--scope", required=True, help="admin, or org:<org id> (read-only)")
    token.add_argument("--name", required=True, help="who holds it (shown in the log)")
    token.set_defaults(handler=cmd_api_token)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the worker, store, api and policy commands to the `meter` parser."""
    _add_worker(sub)
    _add_store(sub)
    _add_api(sub)
    add_report_parser(sub, cmd_report, cmd_report_verify)
    pol = sub.add_parser("policy", help="work with policy files")
    pol_sub = pol.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = pol_sub.add_parser("check", help="validate a policy file and print its effective caps")
    check.add_argument("file")
    check.set_defaults(handler=cmd_policy)
    add_simulate_parser(sub)
    add_demo_parser(sub)
    settings = sub.add_parser("settings", help="print every setting: flag, variable, default")
    settings.set_defaults(handler=cmd_settings)

"""The arguments of `meter report` and `meter report verify`: light to import (the command
itself, `command`, loads the database and crypto clients)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from meter.adapters.report.settings import KEY_HINT, REPORT_OPTIONS
from meter.config import add_arguments

__all__ = ["FORMATS", "add_report_parser"]

FORMATS = ("table", "csv", "json", "html")


def add_report_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    report: Callable[..., int],
    verify: Callable[..., int],
) -> None:
    p = sub.add_parser(
        "report",
        help="an organisation's usage statement for a period, from the usage store",
        description="Build an organisation's usage statement from the usage store: totals, apps, "
        "contract months, endpoints, cap crossings, restricted use and data quality, as "
        "canonical JSON whose SHA-256 is its id, optionally signed. The same --as-of gives the "
        "same bytes in every format. `meter report verify FILE` checks one.",
    )
    p.add_argument("--org", help="the organisation (its id in the policy)")
    p.add_argument("--from", dest="from_", metavar="DATE", help="first day (midnight in --tz)")
    p.add_argument("--to", metavar="DATE", help="the day after the last (midnight in --tz)")
    p.add_argument("--tz", default="UTC", help="IANA zone of the days (default UTC)")
    p.add_argument(
        "--as-of",
        metavar="TIME",
        help="count what the store had received by then (default: all it holds)",
    )
    p.add_argument(
        "--format",
        default="table",
        help=f"{', '.join(FORMATS)}, or several with commas (default table)",
    )
    p.add_argument("--out", metavar="DIR", help="write files here (the JSON statement always)")
    p.add_argument("--top", type=int, default=10, help="endpoints listed (default 10)")
    p.add_argument(
        "--no-record",
        action="store_true",
        help="do not add it to the store's register of statements",
    )
    add_arguments(p, REPORT_OPTIONS)
    p.set_defaults(handler=report)
    actions = p.add_subparsers(dest="report_command", metavar="ACTION")
    v = actions.add_parser(
        "verify",
        help="check a statement file: canonical form, id, signature; rebuild it from the store",
    )
    v.add_argument("file", help="the statement (.json)")
    v.add_argument("--sig", help="its signature file (default: FILE with .sig.json, if there)")
    v.add_argument(
        "--key",
        help=f"the key to check the signature with: {KEY_HINT} "
        "(or a public key PEM); default METER_STATEMENT_KEY",
    )
    v.add_argument("--id", help="the id (SHA-256) the statement must have")
    v.add_argument(
        "--database",
        dest="verify_database",
        help="rebuild it from this usage store (METER_DATABASE)",
    )
    v.add_argument(
        "--policy", dest="verify_policy", help="the policy to rebuild it with (METER_POLICY)"
    )
    v.set_defaults(handler=verify)

"""`meter simulate`: its flags. The run itself (Kafka, generation) is in `meter.sim.run`,
imported only when the command runs, so the rest of the CLI starts fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from meter.config import duration_ms
from meter.core.errors import EventError
from meter.core.events import parse_time
from meter.sim.framing import FORMATS, KEYS
from meter.sim.scenario import DEFAULT_CALLS, START_2022, START_2023


def _instant(text: str) -> int:
    """'2022-01-01' (midnight UTC), an RFC 3339 date-time, or epoch milliseconds."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    if len(value) == 10:
        value += "T00:00:00Z"
    try:
        return parse_time(value)
    except EventError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc.detail}") from None


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 and 1")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _hold(text: str) -> int:
    try:
        return duration_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def add_simulate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `meter simulate`."""
    p = sub.add_parser(
        "simulate",
        help="produce seeded, realistic API-call traffic and write its ground truth",
        description="Generate a year (or any span) of API calls shaped like the 2022 case "
        "(several apps per org, Zipf-like traffic, a daily cycle, bursts that cross caps, "
        "retries, out-of-order, late and malformed records), produce it to the input topic and "
        "write what meter must report for it. Event times span the whole period; --calls or "
        "--scale sets how many calls, so a year replays in minutes.",
    )
    add = p.add_argument
    add("--bootstrap", help="Kafka bootstrap servers (METER_KAFKA_BOOTSTRAP; local broker)")
    add("--topic", help="input topic (METER_INPUT_TOPIC, api-calls)")
    add("--policy", help="policy YAML (METER_POLICY; the bundled example)")
    add("--partitions", type=int, default=4, help="partitions if the topic is created (4)")
    add("--seed", type=int, default=7, help="random seed: same seed, same records (7)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--calls", type=int, help=f"distinct calls to make ({DEFAULT_CALLS:,})")
    size.add_argument(
        "--scale", type=_positive, help="calls as a fraction of the case's 780M calls/year"
    )
    add("--start", type=_instant, default=START_2022, help="first event time (2022-01-01)")
    add("--end", type=_instant, default=START_2023, help="end of event time (2023-01-01)")
    add("--format", choices=FORMATS, default="batch", help="record format (batch)")
    add("--batch-size", type=int, default=100, help="events per batch record (100)")
    add("--max-hold", type=_hold, default=300_000, help="longest an event waits in a batch (5m)")
    add("--key", choices=KEYS, default="app", help="record key: app, org or none (app)")
    add("--mean-records", type=float, default=33.0, help="mean records per call (33)")
    add("--malformed", type=_share, default=0.001, help="malformed records per call (0.001)")
    add("--duplicates", type=_share, default=0.01, help="calls retried (0.01)")
    add("--late", type=_share, default=0.001, help="calls 20m-20h late (0.001)")
    add("--disorder", type=_share, default=0.05, help="calls up to 50s out of order (0.05)")
    add("--bursts", type=_share, default=0.25, help="share of calls in bursts (0.25)")
    add("--unknown", type=_share, default=0.005, help="share of calls by unknown apps (0.005)")
    add("--restricted", type=_share, default=0.0005, help="calls for government (0.0005)")
    add("--no-flush", action="store_true", help="no final events that close every window")
    add("--truth", help="ground truth file (var/sim/truth.json)")
    add("--no-truth", action="store_true", help="do not compute the truth (benchmarks)")
    add("--rate", type=_positive, help="send at most this many events per second")
    add("--progress", action="store_true", help="progress bar on stderr even if not a TTY")
    add("--dry-run", action="store_true", help="make the records but send nothing")
    add("--single-process", action="store_true", help="generate in this process")
    p.set_defaults(handler=cmd_simulate)


def cmd_simulate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Run `meter simulate` with parsed `args`; settings fall back to `env` (METER_*)."""
    from meter.sim.run import run_simulate  # noqa: PLC0415 - loads Kafka and the generator

    return run_simulate(args, env)

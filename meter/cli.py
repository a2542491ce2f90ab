"""The `meter` command line: the one entry point, and the one place logging is configured."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from meter.adapters.broker import BROKER_OPTIONS, BrokerError, BrokerLayout, LocalBroker
from meter.config import add_arguments, kafka_secrets
from meter.core.errors import ConfigError, MeterError, PolicyError, UnavailableError

log = logging.getLogger("meter")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
"""A setting or the policy is wrong: the message names the field."""
EXIT_NOT_RUNNING = 3
EXIT_UNAVAILABLE = 69
"""Kafka (or another service the command needs) did not answer in time."""


def _flags(args: argparse.Namespace) -> dict[str, object | None]:
    return dict(vars(args))


def local_broker(
    flags: Mapping[str, object | None], env: Mapping[str, str], *, secure: bool = False
) -> LocalBroker:
    if secure:
        from meter.adapters.secure_broker import (  # noqa: PLC0415 - TLS and admin client
            AclNames,
            SecureBroker,
            secure_layout,
        )

        return SecureBroker(secure_layout(flags, env), AclNames.load(env))
    return LocalBroker(BrokerLayout.load(flags, env))


def cmd_kafka(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    if args.brokers is not None:
        return cmd_kafka_cluster(args, env)
    broker = local_broker(_flags(args), env, secure=bool(args.secure))
    lay = broker.layout
    action: str = args.action
    if action == "fetch":
        broker.fetch()
        print(f"Kafka jars in {lay.lib}")
        return EXIT_OK
    if action == "start":
        if broker.start(timeout=args.timeout):
            print(f"Kafka broker started (pid {broker.pid()}); bootstrap servers: {lay.bootstrap}")
        else:
            print(f"Kafka broker already running (pid {broker.pid()}); bootstrap: {lay.bootstrap}")
        print(f"data and logs: {lay.state}")
        if args.secure:
            from meter.adapters.secure_broker import SecureBroker  # noqa: PLC0415

            assert isinstance(broker, SecureBroker)
            print(broker.instructions())
        return EXIT_OK
    if action == "stop":
        if broker.stop():
            print("Kafka broker stopped")
        else:
            print("Kafka broker was not running")
        return EXIT_OK
    # status
    if broker.ready():
        print(f"running (pid {broker.pid()}), bootstrap servers: {lay.bootstrap}")
        return EXIT_OK
    if broker.running():
        print(f"starting (pid {broker.pid()}), not yet accepting connections on {lay.bootstrap}")
        return EXIT_NOT_RUNNING
    print("not running")
    return EXIT_NOT_RUNNING


def cmd_kafka_cluster(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """`meter kafka ... --brokers N`: a local cluster (`meter.adapters.broker_cluster`)."""
    from meter.adapters.broker_cluster import LocalCluster  # noqa: PLC0415

    if args.brokers < 1:
        raise ConfigError("--brokers", "a cluster has at least one broker")
    if args.secure:
        raise ConfigError("--brokers", "a secure cluster is not supported: use one of the two")
    cluster = LocalCluster(BrokerLayout.load(_flags(args), env), args.brokers)
    action: str = args.action
    if action == "fetch":
        cluster.nodes[0].fetch()
        print(f"Kafka jars in {cluster.nodes[0].layout.lib}")
        return EXIT_OK
    if action == "start":
        started = cluster.start(timeout=args.timeout)
        cluster.wait_for_brokers(timeout=args.timeout)
        how = "started" if started else "already running"
        print(
            f"Kafka cluster of {len(cluster.nodes)} brokers {how}; topics get replication "
            f"{cluster.replication}, min.insync.replicas {cluster.min_insync_replicas}"
        )
        print(f"bootstrap servers: {cluster.bootstrap}")
        print(f"  export METER_KAFKA_BOOTSTRAP={cluster.bootstrap}")
        print(f"data and logs: {cluster.state}")
        return EXIT_OK
    if action == "stop":
        print("Kafka cluster stopped" if cluster.stop() else "Kafka cluster was not running")
        return EXIT_OK
    ready = 0
    for node in cluster.nodes:
        state = "running" if node.ready() else "starting" if node.running() else "not running"
        ready += node.ready()
        print(f"node {node.node_id}: {state} (pid {node.pid()}), {node.layout.bootstrap}")
    return EXIT_OK if ready == len(cluster.nodes) else EXIT_NOT_RUNNING


def _add_kafka(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "kafka",
        help="manage the local development Kafka broker (Apache Kafka jars from Maven Central)",
        description="Manage a single-node KRaft broker on loopback (data and logs: var/kafka/), "
        "or with --brokers N a local cluster (var/kafka-cluster/).",
    )
    p.add_argument("action", choices=["start", "stop", "status", "fetch"])
    add_arguments(p, BROKER_OPTIONS)
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for start-up")
    p.add_argument(
        "--brokers",
        type=int,
        default=None,
        help="a local cluster of this many brokers instead (3: replication 3, "
        "min.insync.replicas 2; ports from --port, two per node); data in var/kafka-cluster/",
    )
    p.add_argument(
        "--secure",
        action="store_true",
        help="TLS, SASL/SCRAM-SHA-512 users and ACLs; its own data in var/kafka-secure/ "
        "(start prints the variables clients set)",
    )
    p.set_defaults(handler=cmd_kafka)


CLIENT_LOGGERS = ("kafka", "aiokafka", "faust", "mode", "rocksdict", "aiohttp", "asyncio")
"""Libraries whose INFO lines (connections, rebalances, service starts) are noise to a user."""


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """Replaces each secret with *** in every line, tracebacks included, whoever logged it
    (kafka-python logs its admin client's whole configuration at DEBUG, password and all)."""

    def __init__(self, fmt: str, secrets: Sequence[str]) -> None:
        super().__init__(fmt)
        self.secrets = [s for s in secrets if s]

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def configure_logging(*, verbose: bool, secrets: Sequence[str] = ()) -> None:
    """meter's own INFO lines; the client libraries' only from WARNING, unless `-v` (all, DEBUG).
    `secrets` never appear."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT, stream=sys.stderr
    )
    for handler in logging.getLogger().handlers:
        handler.setFormatter(RedactingFormatter(LOG_FORMAT, secrets))
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        logging.getLogger("kafka.net.selector").addFilter(_not_slow_task_warnings)


def _not_slow_task_warnings(record: logging.LogRecord) -> bool:
    """kafka-python 3 warns when one step of its own I/O loop took over 0.1 s (a busy machine,
    a large first metadata answer): its own diagnostic, nothing a user can act on. `-v` shows it."""
    return "blocking the event loop" not in record.getMessage()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meter",
        description="Streaming usage meter: calls and records per app and organisation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_kafka(sub)
    from meter import commands  # noqa: PLC0415 - the heavier commands import faust lazily

    commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = build_parser()
    args = parser.parse_args(argv)
    secrets = kafka_secrets(env)
    configure_logging(verbose=bool(args.verbose), secrets=secrets)

    def fail(message: str, code: int) -> int:
        print(f"meter: {redact(message, secrets)}", file=sys.stderr)
        return code

    try:
        code: int = args.handler(args, env)
    except ConfigError as exc:
        return fail(f"configuration error: {exc}", EXIT_USAGE)
    except PolicyError as exc:
        where = f" at {exc.path}" if exc.path else ""
        return fail(f"policy error{where}: {exc.message}", EXIT_USAGE)
    except UnavailableError as exc:
        return fail(str(exc), EXIT_UNAVAILABLE)
    except BrokerError as exc:
        return fail(str(exc), EXIT_ERROR)
    except MeterError as exc:
        return fail(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())

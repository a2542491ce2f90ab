"""Running a worker process: topics, the faust worker, clean stop on SIGTERM."""

from __future__ import annotations

import gc
import logging
import socket
import time

import faust
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry, disable_created_metrics

from meter.adapters import coordinator_fix
from meter.adapters.broker import wait_for_kafka
from meter.adapters.changelog import tracker_of
from meter.adapters.outages import collapsed_client_noise
from meter.adapters.sinks import SinkService, SinkSettings, is_enabled
from meter.adapters.state_dir import discard_unless_clean, exclusive, mark_clean_stop
from meter.adapters.telemetry import Telemetry
from meter.adapters.topics import (
    BROKER_DEFAULT,
    TopicSpec,
    ensure_topics,
    settled_partition_counts,
)
from meter.adapters.worker import MeterWorker
from meter.core.durations import DAY_MS
from meter.core.errors import ConfigError, UnavailableError
from meter.core.policy import Policy
from meter.worker_settings import WorkerSettings

log = logging.getLogger(__name__)


def topic_specs(s: WorkerSettings) -> list[TopicSpec]:
    """The topics a worker needs, created when missing (partitions: --partitions)."""

    def keep(days: int) -> dict[str, str]:
        return {"retention.ms": str(days * DAY_MS)}

    # The broker's clock stamps input records: ids are remembered by that ingest time, which a
    # gateway's clock then cannot skew. (An input topic created elsewhere keeps its own setting;
    # record timestamps later than the worker's clock are capped at it.)
    arrival = {"message.timestamp.type": "LogAppendTime"}
    return [
        TopicSpec(s.input_topic, s.partitions, keep(7) | arrival),
        TopicSpec(s.routed_topic, s.partitions, keep(7)),
        TopicSpec(s.changelog_topic, s.partitions, {"cleanup.policy": "compact"}),
        TopicSpec(s.dlq_topic, s.partitions, keep(30)),
        TopicSpec(s.alerts_topic, s.partitions, keep(90)),
        TopicSpec(s.windows_topic, s.partitions, keep(400)),
        # One record per subject and cap survives compaction; short segments let it run soon.
        TopicSpec(
            s.quota_topic, s.partitions, {"cleanup.policy": "compact", "segment.ms": "600000"}
        ),
        # faust's leader election reads this topic; created here, it has the replication of the
        # rest (left to the broker, it was auto-created with the broker's defaults).
        TopicSpec(f"{s.group}-__assignor-__leader", 1),
    ]


def durability(replication: int | None) -> dict[str, str]:
    """Topic settings for `--replication`: with 3 or more replicas, a write is acknowledged
    once 2 have it (`acks=all`), so losing one broker loses nothing and stops nothing. Without
    `--replication`, the broker's defaults apply (`meter kafka start --brokers 3` sets 3 and 2)."""
    return {"min.insync.replicas": "2"} if replication is not None and replication >= 3 else {}


def prepare_topics(s: WorkerSettings, bootstrap: str) -> dict[str, int]:
    """Create missing topics; check the routed topic matches the state's partitioning."""
    extra = durability(s.replication)
    specs = [TopicSpec(t.name, t.partitions, {**t.config, **extra}) for t in topic_specs(s)]
    replication = BROKER_DEFAULT if s.replication is None else s.replication
    ensure_topics(bootstrap, specs, replication=replication, security=s.kafka_security)
    counts = settled_partition_counts(
        bootstrap,
        [s.routed_topic, s.changelog_topic, s.alerts_topic, s.windows_topic, s.quota_topic],
        security=s.kafka_security,
    )
    for name in (s.routed_topic, s.changelog_topic):
        if counts.get(name) != s.partitions:
            raise ConfigError(
                "--partitions / METER_PARTITIONS",
                f"topic {name} has {counts.get(name)} partitions but {s.partitions} were "
                "configured; the state is partitioned like it, so they must match",
            )
    return counts


def run_worker(
    settings: WorkerSettings,
    policy: Policy,
    bootstrap: str,
    *,
    verbose: bool,
    sinks: SinkSettings | None = None,
) -> int:
    coordinator_fix.install()
    with exclusive(settings.data_dir):
        check_port_free(settings.web_host, settings.web_port)
        counts = wait_and_prepare_topics(settings, bootstrap)
        return _run(settings, policy, bootstrap, counts, verbose=verbose, sinks=sinks)


def wait_and_prepare_topics(settings: WorkerSettings, bootstrap: str) -> dict[str, int]:
    """Wait for Kafka, then create the topics, within `--connect-timeout` in all: a broker that
    is starting accepts connections before it can answer metadata or create topics, so that is
    waited for too. After the timeout: `UnavailableError` (exit 69)."""
    timeout_s = settings.connect_timeout_ms / 1000
    deadline = time.monotonic() + timeout_s
    wait_for_kafka(bootstrap, timeout_s)
    warned = False
    while True:
        try:
            return prepare_topics(settings, bootstrap)
        except KafkaError as exc:
            if time.monotonic() >= deadline:
                raise UnavailableError(
                    f"cannot prepare the topics at {bootstrap} within {timeout_s:.0f}s: {exc}"
                ) from exc
            if not warned:
                log.warning("Kafka at %s is not ready yet (%s); waiting up to %.0fs",
                            bootstrap, exc, deadline - time.monotonic())  # fmt: skip
                warned = True
            time.sleep(1.0)


def check_port_free(host: str, port: int) -> None:
    """The metrics port must be free before faust starts (it would fail deep inside)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                "--web-port / METER_WEB_PORT",
                f"cannot listen on {host}:{port} ({exc.strerror}): give each worker its own port",
            ) from None


GC_YOUNG_THRESHOLD = 10_000


def quiet_collector() -> None:
    """Keep Python's cycle collector off the alert path. Its full collections scanned every
    object faust, aiokafka and the policy made at start: 40-85 ms each, 6-8 in 25 s at 32,000
    events/s in the latency bench, collecting next to nothing, and each one holds the event loop.
    Those objects live as long as the process, so they are frozen out of its scans; the young
    generation is collected less often (reference counting frees almost everything the hot path
    makes: it is acyclic)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _run(
    settings: WorkerSettings,
    policy: Policy,
    bootstrap: str,
    counts: dict[str, int],
    *,
    verbose: bool,
    sinks: SinkSettings | None,
) -> int:
    removed = discard_unless_clean(settings.data_dir)
    if removed:
        log.warning(
            "the last run on %s did not stop cleanly: its local state (%d table partitions) was "
            "removed and is restored from the changelog topic",
            settings.data_dir,
            len(removed),
        )
    # `_created` series double the scrape size and nobody graphs them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    telemetry = Telemetry(CollectorRegistry(), policy, settings.metrics_max_apps)
    worker = MeterWorker(settings, policy, bootstrap, telemetry)
    worker.out_partitions.update(counts)
    if sinks is not None and is_enabled(sinks):
        # Each sink reads the alerts topic in its own consumer group: a slow or failing sink
        # lags on its own and never slows counting.
        SinkService(sinks, telemetry.registry).attach(
            worker.app, bootstrap, settings.alerts_topic, settings.group,
            security=settings.kafka_security,
        )  # fmt: skip
    log.info(
        "worker %s: input %s, %d partitions, store %s at %s, metrics http://%s:%d/metrics, "
        "Kafka %s",
        settings.group,
        settings.input_topic,
        settings.partitions,
        settings.store,
        settings.data_dir,
        settings.web_host,
        settings.web_port,
        settings.kafka_security.describe(),
    )
    quiet_collector()
    try:
        with collapsed_client_noise(worker.link, verbose=verbose):
            faust.Worker(
                worker.app,
                loglevel="debug" if verbose else "info",
                quiet=True,
                override_logging=False,
            ).execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:
        code = 0
    tracker = tracker_of(worker.app)
    if code == 0 and tracker.complete:
        mark_clean_stop(settings.data_dir)
    else:
        log.warning(
            "stopped with %d changelog record(s) unacknowledged (exit %d): the local state will "
            "be restored from the changelog at the next start",
            len(tracker.pending),
            code,
        )
    return code

"""`meter store`: a Kafka consumer of the window totals and alerts topics that writes them into the
database exactly once. It assigns every partition itself (no consumer group), resumes at the
offsets stored with the rows, and stops on SIGTERM or Ctrl-C after the transaction in hand.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from meter.adapters.backoff import KAFKA_RETRY
from meter.adapters.broker import wait_for_kafka
from meter.adapters.kafka_security import aiokafka_args, kafka_python_args
from meter.adapters.outages import KafkaLink, collapsed_client_noise, start_probe_thread
from meter.adapters.store.database import OPERATIONAL_ERRORS, Database, open_database
from meter.adapters.store.ingest import ALERTS, WINDOWS, BatchResult, apply_batch, stored_offsets
from meter.adapters.store.records import Consumed
from meter.adapters.store.settings import StoreSettings
from meter.adapters.watchdog import CHECK_INTERVAL_S, ProgressWatchdog, exit_stalled
from meter.config import KafkaSecurity
from meter.core.errors import UnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")
POLL_MS = 500
RECHECK_PARTITIONS_S = 30.0


class StoreService:
    """Reads `settings`' topics into `db` until `stop()` (or `max_idle_polls` empty polls)."""

    def __init__(
        self,
        settings: StoreSettings,
        db: Database,
        bootstrap: str,
        *,
        clock: Callable[[], float] = time.time,
        link: KafkaLink | None = None,
        watchdog: ProgressWatchdog | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.bootstrap = bootstrap
        self.clock = clock
        self.kinds = {settings.windows_topic: WINDOWS, settings.alerts_topic: ALERTS}
        self.totals = BatchResult()
        self._stopping = threading.Event()
        self._consumer: Any = None
        self.link = link
        self.watchdog = watchdog
        self.positions: dict[tuple[str, int], int] = {}
        """Per (topic, partition): the next offset to store (for the watchdog)."""
        self._checked = 0.0

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run`."""
        self._stopping.set()

    def _connect(self) -> Any:
        return KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=self.settings.client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            allow_auto_create_topics=False,
            max_poll_records=self.settings.batch,
            **kafka_python_args(self.settings.kafka_security),
        )

    def _partitions(self) -> dict[str, set[int]] | None:
        found = {t: self._consumer.partitions_for_topic(t) for t in self.kinds}
        if any(not p for p in found.values()):
            return None
        return {t: set(p) for t, p in found.items()}

    def _wait_for_topics(self) -> dict[str, set[int]] | None:
        """The partitions of both topics, once they exist (the workers create them)."""
        warned = False
        while not self._stopping.is_set():
            parts = self._partitions()
            if parts is not None:
                return parts
            if not warned:
                log.warning("topics %s not found yet on %s: waiting for the workers to create "
                            "them%s", " and ".join(self.kinds), self.bootstrap,
                            _or_no_acl(self.settings.kafka_security))  # fmt: skip
                warned = True
            self._stopping.wait(1.0)
        return None

    def _assign(self, parts: dict[str, set[int]], *, first: bool) -> None:
        """Assign every partition in `parts` and seek each to its stored offset (the beginning
        when none); logs where each topic resumes."""
        offsets = stored_offsets(self.db)
        current = set(self._consumer.assignment()) if not first else set()
        tps = [TopicPartition(t, p) for t in sorted(parts) for p in sorted(parts[t])]
        added = [tp for tp in tps if tp not in current]
        if not added:
            return
        self._consumer.assign(tps)
        starts = self._consumer.beginning_offsets(added)
        resume: dict[str, list[str]] = {t: [] for t in parts}
        for tp in added:
            stored = offsets.get((tp.topic, tp.partition))
            if stored is None:
                self._consumer.seek(tp, starts[tp])
                self.positions[(tp.topic, tp.partition)] = starts[tp]
                resume[tp.topic].append(f"{tp.partition}@start")
                continue
            if stored < starts[tp]:
                log.warning("%s partition %d: records %d to %d are gone from Kafka (retention) "
                            "and were never stored", tp.topic, tp.partition, stored,
                            starts[tp] - 1)  # fmt: skip
                stored = starts[tp]
            self._consumer.seek(tp, stored)
            self.positions[(tp.topic, tp.partition)] = stored
            resume[tp.topic].append(f"{tp.partition}@{stored}")
        where = "; ".join(f"{t} {' '.join(r)}" for t, r in resume.items() if r)
        if first:
            log.info("store: database %s, reading %s (client %s); resuming at partition@offset: "
                     "%s", self.db.label, " and ".join(self.kinds), self.settings.client_id,
                     where)  # fmt: skip
        else:
            log.info("store: new partitions, reading %s", where)

    def run(self, *, max_idle_polls: int | None = None) -> BatchResult:
        """Consume and store until stopped; returns what was stored. Kafka trouble never ends
        it: a call the client gives up on is tried again after a backoff."""
        self._consumer = self._kafka("connecting to Kafka", self._connect)
        if self._consumer is None:
            return self.totals
        try:
            parts = self._wait_for_topics()
            if parts is None:
                return self.totals
            self._kafka("seeking to the stored offsets", lambda: self._assign(parts, first=True))
            self._checked = time.monotonic()
            watched = time.monotonic()
            idle = 0
            while not self._stopping.is_set():
                if self._kafka("reading", self._poll_once):
                    idle = 0
                else:
                    idle += 1
                    if max_idle_polls is not None and idle >= max_idle_polls:
                        break
                if time.monotonic() - self._checked >= RECHECK_PARTITIONS_S:
                    self._checked = time.monotonic()
                    grown = self._kafka("reading the topics' partitions", self._partitions)
                    if grown is not None:
                        assign = functools.partial(self._assign, grown, first=False)
                        self._kafka("reading new partitions", assign)
                if self.watchdog is not None and time.monotonic() - watched >= CHECK_INTERVAL_S:
                    watched = time.monotonic()
                    self._watch(self.watchdog)
        finally:
            self._consumer.close(autocommit=False)
        return self.totals

    def _kafka(self, what: str, call: Callable[[], T]) -> T | None:
        """`call()`, tried again after a backoff (`KAFKA_RETRY`: 0.5 s doubling to 30 s) while
        the Kafka client fails; None if the service is stopped meanwhile."""
        failures = 0
        while not self._stopping.is_set():
            try:
                return call()
            except KafkaError as exc:
                failures += 1
                delay = KAFKA_RETRY.ceiling(failures - 1)
                if failures == 1 or failures % 10 == 0:
                    log.warning("store: %s failed (%s: %s); trying again in %.1fs (attempt %d)",
                                what, type(exc).__name__, exc, delay, failures)  # fmt: skip
                self._stopping.wait(delay)
        return None

    def _watch(self, watchdog: ProgressWatchdog) -> None:
        """Is the store's consumer stalled (records waiting, no progress)? Exit when overdue."""
        consumer = self._consumer
        lag = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)  # from the last fetch: no request
            done = self.positions.get((tp.topic, tp.partition))
            if high is not None and done is not None:
                lag += max(0, high - done)
        position = tuple(sorted(self.positions.items()))
        up = self.link is None or self.link.up is not False
        watchdog.observe("store", position, lag, kafka_up=up)
        stall = watchdog.overdue()
        if stall is not None:
            exit_stalled(stall)

    def _poll_once(self) -> bool:
        polled = self._consumer.poll(timeout_ms=POLL_MS, max_records=self.settings.batch)
        batch = [
            Consumed(m.topic, m.partition, m.offset, m.value)
            for tp in sorted(polled, key=lambda tp: (tp.topic, tp.partition))
            for m in polled[tp]
        ]
        if not batch:
            return False
        result = apply_batch(self.db, batch, self.kinds, int(self.clock() * 1000))
        for name in ("windows", "applied", "replays", "alerts", "repeated_alerts", "rejected"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(result, name))
        self.totals.offsets.update(result.offsets)
        self.positions.update(result.offsets)
        return True


@contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and SIGINT ask the service to stop (after the transaction in hand)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("store: %s received, stopping after the batch in hand",
                 signal.Signals(signum).name)  # fmt: skip
        stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _or_no_acl(security: KafkaSecurity) -> str:
    # A topic this user may not describe looks just like a missing one.
    return f" (or user {security.username} may not read them: ACLs)" if security.sasl else ""


def run_store(settings: StoreSettings, bootstrap: str, *, verbose: bool = False) -> int:
    """The `meter store` process: open the database (migrating it), wait for Kafka, then store
    until SIGTERM or Ctrl-C. Returns the exit status."""
    timeout_s = settings.connect_timeout_ms / 1000
    db = open_database(settings.database, timeout_s=timeout_s)
    try:
        wait_for_kafka(bootstrap, timeout_s)
        link = KafkaLink(bootstrap)
        start_probe_thread(link, bootstrap, aiokafka_args(settings.kafka_security))
        watchdog = ProgressWatchdog(
            settings.stall_timeout_ms / 1000, settings.stall_exit_ms / 1000 or math.inf
        )
        service = StoreService(settings, db, bootstrap, link=link, watchdog=watchdog)
        with _stop_on_signals(service.stop), collapsed_client_noise(link, verbose=verbose):
            try:
                totals = service.run()
            except OPERATIONAL_ERRORS as exc:
                raise UnavailableError(
                    f"the database {db.label} failed: {exc}; nothing is lost: the batch in hand "
                    "is read again from Kafka at the next start"
                ) from exc
        log.info("store: stopped; stored %d window record(s) (%d changed totals, %d replays "
                 "ignored) and %d alert(s) this run", totals.windows, totals.applied,
                 totals.replays, totals.alerts)  # fmt: skip
        return 0
    finally:
        db.close()

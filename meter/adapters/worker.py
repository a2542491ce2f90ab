"""A worker process: the faust app (`meter.adapters.app`) running the router (stage 1,
`meter.adapters.router`) as a task and the counter (stage 2, `meter.adapters.counter`) as an
agent, and what `/metrics` sees of them.

The data path goes one way: input topic -> router -> routed topic -> counter (core ledger, state
in the faust table) -> outputs; the alert sinks read the alerts topic on their own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from faust.types import TP

from meter.adapters.app import build_app, die
from meter.adapters.counter import Counter
from meter.adapters.kafka_security import aiokafka_args
from meter.adapters.outages import KafkaLink, LinkCollector, probe
from meter.adapters.routed_offsets import COMMIT_INTERVAL_S
from meter.adapters.router import Router
from meter.adapters.telemetry import PartitionState, Telemetry
from meter.adapters.watchdog import (
    CHECK_INTERVAL_S,
    ProgressWatchdog,
    WatchdogCollector,
    exit_stalled,
)
from meter.core.ledger import CapUsage
from meter.core.policy import Policy
from meter.worker_settings import WorkerSettings

log = logging.getLogger(__name__)


class MeterWorker:
    """Builds the faust app for `settings` and `policy`; `app` is what `faust.Worker` runs."""

    def __init__(
        self,
        settings: WorkerSettings,
        policy: Policy,
        bootstrap: str,
        telemetry: Telemetry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.bootstrap = bootstrap
        self.clock = clock
        built = build_app(settings, bootstrap)
        self.app = built.faust
        self.counter = Counter(settings, policy, bootstrap, built, telemetry, clock)
        self._routed = built.topic(settings.routed_topic)
        self._topics = built.topics
        self.router = Router(settings, policy, bootstrap, telemetry, self._send, clock)
        self.app.task(self._run_router)
        self.app.agent(self._routed, name="count")(self._count)
        self.app.timer(COMMIT_INTERVAL_S, name="commit-routed")(self._commit)
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        self.app.on_before_shutdown.connect(self._on_shutdown)  # type: ignore[arg-type]
        telemetry.install(self.app, self)
        # Kafka outages and stalls (`meter.adapters.outages`, `meter.adapters.watchdog`).
        self.link = KafkaLink(bootstrap)
        self.watchdog = ProgressWatchdog(
            settings.stall_timeout_ms / 1000, settings.stall_exit_ms / 1000 or math.inf
        )
        telemetry.registry.register(LinkCollector(self.link))
        telemetry.registry.register(WatchdogCollector(self.watchdog))
        self.app.task(self._probe)
        self.app.task(self._watch)

    @property
    def out_partitions(self) -> dict[str, int]:
        return self.counter.out_partitions

    # -- the two stages ------------------------------------------------------------------------
    async def _run_router(self) -> None:
        try:
            await self.router.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.app.should_stop:
                # The producer may stop before this task: the batch in hand was not committed,
                # so whoever routes next routes it again. Not a failure.
                log.info("router stopped with a batch in hand (%r): it will be routed again", exc)
                return
            die("route", exc)

    async def _send(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> Any:
        """Hand a record to the producer; returns what to await for Kafka's acknowledgement."""
        return await self._topics[topic].send(
            key=key, value=value, headers=headers, partition=partition
        )

    async def _count(self, stream: Any) -> None:
        # One routed record at a time: each carries many events (one organisation's share of a
        # router batch), so faust's cost per record is spread over them. faust sets the current
        # event, which sends the table's changelog writes to this record's partition.
        async for event in stream.events():
            try:
                await self.counter.count(event.message)
            except Exception as exc:
                die("count", exc)

    async def _commit(self) -> None:
        """Commit the routed offsets the ledgers applied (`meter.adapters.routed_offsets`)."""
        if self.app.rebalancing:
            return  # the revoke handler commits what leaves; the rest waits for the next tick
        await self._commit_safely(None)

    async def _commit_safely(self, partitions: list[int] | None) -> None:
        # A commit that fails costs a replay at the next start, never a count: log, go on.
        try:
            await self.counter.commit(partitions)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("could not commit the routed offsets (retried): %r", exc)

    async def _on_revoked(self, sender: Any, revoked: set[TP], **_: Any) -> None:
        # faust has waited for the records in hand to be processed: what the ledgers applied is
        # committed before the partitions go (their next owner starts there).
        routed = self.settings.routed_topic
        partitions = [tp.partition for tp in revoked if tp.topic == routed]
        await self._commit_safely(partitions)
        self.counter.revoked(partitions)

    async def _on_shutdown(self, sender: Any, **_: Any) -> None:
        await self._commit_safely(None)

    # -- outages and stalls --------------------------------------------------------------------
    async def _probe(self) -> None:
        await probe(self.link, self.bootstrap, aiokafka_args(self.settings.kafka_security))

    async def _watch(self) -> None:
        """Every few seconds: is the router or the counter stalled, for how long?"""
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            up = self.link.up is not False
            self.watchdog.observe("router", *self.router.progress(), kafka_up=up)
            self.watchdog.observe("counter", *self._counter_progress(), kafka_up=up)
            stall = self.watchdog.overdue()
            if stall is not None:
                exit_stalled(stall)

    def _counter_progress(self) -> tuple[tuple[tuple[int, int | None], ...], int]:
        """The routed offsets each ledger has applied, and the routed records not yet read
        (none while the state is being restored: that is progress of another kind)."""
        position = tuple(sorted((p, led.next_offset()) for p, led in self.counter.ledgers.items()))
        if self._restoring():
            return position, 0
        routed = self.settings.routed_topic
        return position, sum(n for (t, _), n in self.consumer_lag().items() if t == routed)

    # -- what /metrics sees (`meter.adapters.telemetry.Observed`) -------------------------------
    def cap_usages(self) -> Iterable[CapUsage]:
        return self.counter.cap_usages()

    def partition_states(self) -> Iterable[PartitionState]:
        return self.counter.partition_states()

    def not_ready(self) -> list[str]:
        app = self.app
        reasons = []
        if self.router.consumer is None:
            reasons.append("router not started")
        if app.rebalancing:
            reasons.append("consumer group rebalancing")
        if self._restoring():
            reasons.append("restoring state from the changelog")
        return reasons + self.trouble()

    def _restoring(self) -> bool:
        recovery = getattr(self.app.tables, "recovery", None)  # faust's TableManager has one
        return bool(self.app.in_recovery or recovery is None or not recovery.completed.is_set())

    def trouble(self) -> list[str]:
        """Kafka unreachable, consumers stalled (also part of `not_ready`)."""
        kafka = self.link.problem()
        return ([kafka] if kafka else []) + self.watchdog.problems()

    def consumer_lag(self) -> Mapping[tuple[str, int], int]:
        """Records not yet read per assigned partition, of the input and the routed topic (best
        effort: it reads aiokafka's and faust's bookkeeping)."""
        out = {(self.settings.input_topic, p): n for p, n in self.router.lag().items()}
        consumer = getattr(self.app, "_consumer", None)
        if consumer is None:
            return out
        try:
            for tp in consumer.assignment():
                if tp.topic != self.settings.routed_topic:
                    continue
                high = consumer.highwater(tp)
                read = consumer._read_offset.get(tp)
                if high is not None:
                    out[(tp.topic, tp.partition)] = max(
                        0, high - (read + 1 if read is not None else 0)
                    )
        except (AttributeError, KeyError, TypeError):  # faust internals: best effort
            pass
        return out

    def now(self) -> float:
        return self.clock()

"""Running the configured alert sinks next to the worker, each as its own asyncio task.

The alerts topic is always on (the worker publishes it); `SinkService` adds a webhook and/or
Alertmanager, each reading the topic with its own consumer group, so a sink that is slow or down
never slows counting and never loses an alert.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from meter.adapters.backoff import Backoff
from meter.adapters.kafka_security import PLAINTEXT
from meter.adapters.sinks.alertmanager import AlertmanagerSink
from meter.adapters.sinks.delivery import DeliveryLoop, Sink, read_alerts_since
from meter.adapters.sinks.metrics import SinkMetrics
from meter.adapters.sinks.settings import SinkSettings, is_enabled
from meter.adapters.sinks.webhook import WebhookSink
from meter.config import KafkaSecurity

log = logging.getLogger(__name__)

# Alerts emitted this long ago may still be firing (a calendar month is at most 31 days and an
# hour); at start the Alertmanager sink re-reads them to keep re-sending the active ones.
RESTORE_LOOKBACK_MS = 35 * 86_400_000


class SinkService:
    """Starts and stops the sinks that `settings` configure (none: `start` does nothing)."""

    def __init__(
        self,
        settings: SinkSettings,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        restore_lookback_ms: int = RESTORE_LOOKBACK_MS,
        drain_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.metrics = SinkMetrics(registry if registry is not None else CollectorRegistry())
        self.clock = clock
        self.rand = rand
        self.restore_lookback_ms = restore_lookback_ms
        self.drain_s = drain_s
        self.backoff = Backoff(settings.backoff_ms / 1000, settings.max_backoff_ms / 1000)
        self.loops: list[DeliveryLoop] = []
        self.alertmanager: AlertmanagerSink | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._draining: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return is_enabled(self.settings)

    def _sinks(self, session: aiohttp.ClientSession) -> list[Sink]:
        s = self.settings
        sinks: list[Sink] = []
        if s.webhook_url is not None and s.webhook_secret is not None:
            sinks.append(
                WebhookSink(session, s.webhook_url, s.webhook_secret, s.webhook_timeout_ms / 1000)
            )
        if s.alertmanager_url is not None:
            self.alertmanager = AlertmanagerSink(
                session,
                s.alertmanager_url,
                metrics=self.metrics,
                resend_ms=s.alertmanager_resend_ms,
                min_firing_ms=s.alertmanager_min_firing_ms,
                generator_url=s.alertmanager_generator_url,
                timeout_s=s.alertmanager_timeout_ms / 1000,
                clock=self.clock,
            )
            sinks.append(self.alertmanager)
        return sinks

    async def start(
        self,
        bootstrap: str,
        alerts_topic: str,
        group: str,
        *,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        """Start delivering `alerts_topic` to every configured sink; returns at once (the tasks
        connect and retry in the background)."""
        if self._tasks or self._draining:
            raise RuntimeError("the sinks are already running")
        if not self.enabled:
            return
        log.info("alert sinks: %r", self.settings)
        self._stopping.clear()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(10, self.settings.batch * 2)),
            headers={"User-Agent": "meter-alert-sink"},
        )
        for sink in self._sinks(self._session):
            loop = DeliveryLoop(
                sink,
                bootstrap=bootstrap,
                topic=alerts_topic,
                group=group,
                metrics=self.metrics,
                backoff=self.backoff,
                batch=self.settings.batch,
                start=self.settings.start,
                rand=self.rand,
                clock=self.clock,
                security=security,
            )
            self.loops.append(loop)
            self._spawn(f"sink {sink.name}", loop.run, drains=True)
        if self.alertmanager is not None:
            am = self.alertmanager

            async def keep_alive() -> None:
                since = int(self.clock() * 1000) - self.restore_lookback_ms
                recent = await read_alerts_since(
                    bootstrap, alerts_topic, since, am.may_be_firing, security=security
                )
                restored = am.restore(recent)
                if restored:
                    log.info("sink %s: %d alert(s) may still be firing", am.name, restored)
                await am.keep_alive()

            self._spawn("sink alertmanager (re-sends)", keep_alive, drains=False)

    def attach(
        self,
        app: Any,
        bootstrap: str,
        alerts_topic: str,
        group: str,
        *,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        """Run with a faust app: start once the worker is ready, stop before it shuts down."""

        async def start_sinks() -> None:
            await self.start(bootstrap, alerts_topic, group, security=security)

        async def stop_sinks(sender: Any, **_: Any) -> None:
            await self.stop()

        app.task(start_sinks)
        app.on_before_shutdown.connect(stop_sinks, weak=False)

    def _spawn(self, what: str, run: Callable[[], Awaitable[None]], *, drains: bool) -> None:
        """`drains`: the task finishes its work in flight when asked to stop (else: cancelled)."""
        task = asyncio.create_task(self._supervise(what, run), name=what)
        (self._draining if drains else self._tasks).append(task)

    async def _supervise(self, what: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run` until stopped; restart it after a backoff when it fails (e.g. no broker)."""
        attempt = 0
        while not self._stopping.is_set():
            try:
                await run()
            except Exception:
                delay = self.backoff.delay(attempt, self.rand)
                log.exception("%s failed; restarting in %.1fs", what, delay)
                attempt += 1
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                except TimeoutError:
                    continue
            else:
                attempt = 0

    async def stop(self) -> None:
        """Let batches in flight finish for up to `drain_s`, then cancel; close connections.
        Alerts not committed are delivered again at the next start."""
        self._stopping.set()
        for loop in self.loops:
            loop.stop()
        draining, self._draining = self._draining, []
        others, self._tasks = self._tasks, []
        for task in others:
            task.cancel()
        pending: set[asyncio.Task[None]] = set()
        if draining:
            _, pending = await asyncio.wait(draining, timeout=self.drain_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*draining, *others, return_exceptions=True)
        self.loops = []
        self.alertmanager = None
        if self._session is not None:
            await self._session.close()
            self._session = None

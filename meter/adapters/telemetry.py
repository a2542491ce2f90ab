"""Prometheus metrics of a worker, served at `/metrics` on the worker's web port.

Every metric takes the registry passed in. Organisation labels are bounded: only organisations
named in the policy get their own series; everything else is folded into "other".
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from meter.core.events import Rejection
from meter.core.ledger import Pending, Stats
from meter.core.outputs import ALERTS
from meter.core.policy import Policy

if TYPE_CHECKING:
    from meter.adapters.worker import MeterWorker

OTHER = "other"


class Telemetry:
    """The worker's counters and gauges; `install` adds the `/metrics` page to the faust app."""

    def __init__(self, registry: CollectorRegistry, policy: Policy) -> None:
        self.registry = registry
        self.orgs = frozenset(policy.orgs)
        r = registry
        self.events = Counter("meter_events", "Events counted (after deduplication)", registry=r)
        self.calls = Counter(
            "meter_calls", "API calls counted, by organisation", ["org"], registry=r
        )
        self.records = Counter(
            "meter_records", "Records retrieved, by organisation", ["org"], registry=r
        )
        self.duplicates = Counter(
            "meter_duplicate_events",
            "Events dropped as repeats of an id already counted",
            registry=r,
        )
        self.late = Counter(
            "meter_late_events",
            "Events that arrived after their window closed (amendments)",
            registry=r,
        )
        self.unknown = Counter(
            "meter_unknown_app_events", "Events from apps the policy does not know", registry=r
        )
        self.replayed = Counter(
            "meter_replayed_state_keys",
            "State keys skipped because a replayed record was already applied to them",
            registry=r,
        )
        self.dead = Counter(
            "meter_dead_letter_events",
            "Rejected records or batch elements, by reason",
            ["reason"],
            registry=r,
        )
        self.alerts = Counter(
            "meter_alerts",
            "Alerts published, by kind and severity",
            ["kind", "severity"],
            registry=r,
        )
        self.windows = Counter(
            "meter_window_records",
            "Window totals published (final and amendments)",
            ["type"],
            registry=r,
        )
        self.processing = Histogram(
            "meter_record_processing_seconds",
            "Time to fold one routed record into the ledger",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=r,
        )
        self.batch = Histogram(
            "meter_routed_batch_events",
            "Events per routed record",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
            registry=r,
        )
        self.watermark = Gauge(
            "meter_watermark_seconds",
            "Event-time watermark per partition (epoch s)",
            ["partition"],
            registry=r,
        )
        self.event_lag = Gauge(
            "meter_event_time_lag_seconds",
            "Wall clock minus the event-time watermark, per partition",
            ["partition"],
            registry=r,
        )

    def _org(self, org: str) -> str:
        return org if org in self.orgs else OTHER

    def rejected(self, rejections: Sequence[Rejection]) -> None:
        for rej in rejections:
            self.dead.labels(rej.reason).inc()

    def applied(self, partition: int, stats: Stats, n: int, started: float, msg: Any) -> None:
        self.processing.observe(time.perf_counter() - started)
        self.batch.observe(n)
        self.events.inc(stats.events)
        if stats.duplicates:
            self.duplicates.inc(stats.duplicates)
        if stats.late:
            self.late.inc(stats.late)
        if stats.unknown_app:
            self.unknown.inc(stats.unknown_app)
        if stats.replayed:
            self.replayed.inc(stats.replayed)
        for org, calls in stats.calls_by_org.items():
            self.calls.labels(self._org(org)).inc(calls)
        for org, recs in stats.records_by_org.items():
            self.records.labels(self._org(org)).inc(recs)

    def watermarks(self, ledgers: Iterable[tuple[int, int | None]], now: float) -> None:
        for partition, wm in ledgers:
            if wm is not None:
                self.watermark.labels(str(partition)).set(wm / 1000)
                self.event_lag.labels(str(partition)).set(now - wm / 1000)

    def published(self, sent: Iterable[Pending]) -> None:
        for p in sent:
            v = p.record.value
            if p.record.kind == ALERTS:
                self.alerts.labels(v["kind"], v["severity"]).inc()
            else:
                self.windows.labels("final" if v["revision"] == 0 else "amendment").inc()

    def install(self, app: Any, worker: MeterWorker) -> None:
        from aiohttp import web  # noqa: PLC0415 - only with the faust web server

        registry = self.registry

        @app.page("/metrics")  # type: ignore[untyped-decorator]
        async def metrics(web_view: Any, request: Any) -> Any:
            self.watermarks(((p, lg.watermark_ms) for p, lg in worker.ledgers.items()), time.time())
            return web.Response(
                body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

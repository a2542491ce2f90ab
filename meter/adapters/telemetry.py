"""Prometheus metrics of a worker, served at `/metrics` on the worker's web port.

Every metric takes the registry passed in. Organisation labels are bounded: only organisations
named in the policy get their own series; everything else is folded into "other".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from meter.core.events import REASONS, Rejection
from meter.core.ledger import CapUsage, Pending, Stats
from meter.core.outputs import ALERTS, QUOTA, WINDOWS
from meter.core.policy import Policy

OTHER = "other"


class Telemetry:
    """The worker's counters and gauges; `install` adds the `/metrics` page to the faust app."""

    def __init__(self, registry: CollectorRegistry, policy: Policy, max_apps: int = 100) -> None:
        self.registry = registry
        self.policy = policy
        self.orgs = frozenset(policy.orgs)
        self.max_apps = max_apps
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
        self.untracked = Counter(
            "meter_unknown_app_untracked_events",
            "Events of unknown apps past --max-unknown-apps, counted together as app *",
            registry=r,
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
        self.quota = Counter(
            "meter_quota_updates",
            "Quota feed records published (tombstones included)",
            registry=r,
        )
        self.input_records = Counter(
            "meter_input_records", "Input records routed (dead-lettered ones included)", registry=r
        )
        self.gap_records = Counter(
            "meter_skipped_records_recovered",
            "Routed records the consumer skipped (in a rebalance) that the counter read itself",
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
        self.precreate()

    def precreate(self) -> None:
        """Create the known label values at zero, so `rate()` sees the first increment too."""
        for org in (*self.orgs, OTHER):
            self.calls.labels(org)
            self.records.labels(org)
        for reason in REASONS:
            self.dead.labels(reason)
        for kind in ("final", "amendment"):
            self.windows.labels(kind)

    def _org(self, org: str) -> str:
        return org if org in self.orgs else OTHER

    def rejected(self, rejections: Sequence[Rejection]) -> None:
        for rej in rejections:
            self.dead.labels(rej.reason).inc()

    def routed(self, records: int) -> None:
        self.input_records.inc(records)

    def gap_filled(self, records: int) -> None:
        self.gap_records.inc(records)

    def applied(self, stats: Stats, n: int, seconds: float) -> None:
        self.processing.observe(seconds)
        self.batch.observe(n)
        self.events.inc(stats.events)
        if stats.duplicates:
            self.duplicates.inc(stats.duplicates)
        if stats.late:
            self.late.inc(stats.late)
        if stats.unknown_app:
            self.unknown.inc(stats.unknown_app)
        if stats.unknown_untracked:
            self.untracked.inc(stats.unknown_untracked)
        if stats.replayed:
            self.replayed.inc(stats.replayed)
        if stats.too_late:
            self.dead.labels("too_late").inc(stats.too_late)
        for org, calls in stats.calls_by_org.items():
            self.calls.labels(self._org(org)).inc(calls)
        for org, recs in stats.records_by_org.items():
            self.records.labels(self._org(org)).inc(recs)

    def published(self, sent: Iterable[Pending]) -> None:
        for p in sent:
            v = p.record.value
            if p.record.kind == QUOTA:
                self.quota.inc()
            elif p.record.kind == ALERTS:
                self.alerts.labels(v["kind"], v["severity"]).inc()
            elif p.record.kind == WINDOWS:
                self.windows.labels("final" if v["revision"] == 0 else "amendment").inc()

    def install(self, app: Any, observed: Observed) -> None:
        """Serve `/metrics` on the faust app's web server, with gauges read from `observed`, and
        the health checks: `/healthz` (the event loop answers) and `/readyz` (200 once the
        worker is counting; 503 with the reasons while it is not)."""
        from aiohttp import web  # noqa: PLC0415 - only with the faust web server

        registry = self.registry
        registry.register(WorkerCollector(observed, self.policy, self.max_apps))

        @app.page("/metrics")  # type: ignore[untyped-decorator]
        async def metrics(web_view: Any, request: Any) -> Any:
            # `?name[]=meter_events_total&name[]=...` restricts the page to those series, as
            # prometheus_client's own server does: a cheap probe for scripts and benchmarks.
            names = request.query.getall("name[]", [])
            source = registry.restricted_registry(names) if names else registry
            return web.Response(
                body=generate_latest(source), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        @app.page("/healthz")  # type: ignore[untyped-decorator]
        async def healthz(web_view: Any, request: Any) -> Any:
            return web.json_response({"status": "ok"})

        @app.page("/readyz")  # type: ignore[untyped-decorator]
        async def readyz(web_view: Any, request: Any) -> Any:
            waiting = observed.not_ready()
            body = {"status": "waiting" if waiting else "ready", "waiting_for": waiting}
            return web.json_response(body, status=503 if waiting else 200)


@dataclass(frozen=True, slots=True)
class PartitionState:
    """What the gauges show of one routed partition's ledger."""

    partition: int
    close_wm: int | None
    event_wm: int | None
    state_sizes: Mapping[str, int]
    unsent: int


class Observed(Protocol):
    """What the gauges read from a worker, computed at scrape time."""

    def cap_usages(self) -> Iterable[CapUsage]: ...
    def partition_states(self) -> Iterable[PartitionState]: ...
    def consumer_lag(self) -> Mapping[tuple[str, int], int]: ...
    def now(self) -> float: ...
    def not_ready(self) -> list[str]:
        """Why the worker is not counting yet (empty: it is)."""
        ...


WORKER_GAUGES = (
    "meter_cap_usage",
    "meter_cap_limit",
    "meter_cap_utilization_ratio",
    "meter_watermark_seconds",
    "meter_event_watermark_seconds",
    "meter_event_time_lag_seconds",
    "meter_state_keys",
    "meter_outbox_pending_records",
    "meter_consumer_lag_records",
)
"""What `WorkerCollector` yields (each a gauge family)."""


class WorkerCollector(Collector):
    """Gauges computed at scrape time from the worker's live state: a window that closed or a
    partition that moved away simply stops being reported."""

    def __init__(self, observed: Observed, policy: Policy, max_apps: int) -> None:
        self.observed = observed
        self.policy = policy
        self.max_apps = max_apps

    def describe(self) -> Iterator[Metric]:
        """The families `collect` yields, without samples. Named, this collector is skipped by
        a scrape restricted to other series (`/metrics?name[]=...`); unnamed, every such scrape
        walked every cap usage (a tenth of the worker's CPU with 10,000 organisations, polled
        ten times a second)."""
        for name in WORKER_GAUGES:
            yield GaugeMetricFamily(name, "")

    def collect(self) -> Iterator[Metric]:
        policy = self.policy
        labels = ["subject_type", "subject", "cap", "metric", "window"]
        used = GaugeMetricFamily(
            "meter_cap_usage", "Usage of a cap in the current window", labels=labels
        )
        limit = GaugeMetricFamily("meter_cap_limit", "Limit of a cap", labels=labels)
        ratio = GaugeMetricFamily(
            "meter_cap_utilization_ratio",
            "Usage over limit in the current window (0-1+)",
            labels=labels,
        )
        apps: list[CapUsage] = []
        other: dict[tuple[str, str, str], list[float]] = {}
        for u in self.observed.cap_usages():
            known = (
                policy.known_app(u.subject) if u.subject_type == "app" else u.subject in policy.orgs
            )
            if u.subject_type == "app" and known:
                apps.append(u)
            elif known:
                _add(used, limit, ratio, u, u.subject)
            else:
                _fold(other, u)
        # The apps closest to their caps keep their own series; the rest fold into "other".
        worst: dict[str, float] = {}
        for u in apps:
            worst[u.subject] = max(worst.get(u.subject, 0.0), u.used / u.limit)
        shown = set(sorted(worst, key=lambda app: (-worst[app], app))[: self.max_apps])
        for u in apps:
            if u.subject in shown:
                _add(used, limit, ratio, u, u.subject)
            else:
                _fold(other, u)
        for (stype, cap, window), (u_sum, l_sum, top, metric_is_calls) in other.items():
            lab = [stype, OTHER, cap, "calls" if metric_is_calls else "records", window]
            used.add_metric(lab, u_sum)
            limit.add_metric(lab, l_sum)
            ratio.add_metric(lab, top)
        yield used
        yield limit
        yield ratio
        yield from self._partitions()
        yield self._consumer_lag()

    def _partitions(self) -> Iterator[Metric]:
        wm = GaugeMetricFamily(
            "meter_watermark_seconds",
            "Watermark windows close on (epoch s): event time all active input partitions have"
            " reached, or the routers' clock when every input partition is idle",
            labels=["partition"],
        )
        event_wm = GaugeMetricFamily(
            "meter_event_watermark_seconds",
            "Event time all active input partitions have reached (epoch s); state expires on it",
            labels=["partition"],
        )
        lag = GaugeMetricFamily(
            "meter_event_time_lag_seconds",
            "Wall clock minus the watermark windows close on",
            labels=["partition"],
        )
        keys = GaugeMetricFamily(
            "meter_state_keys", "Indexed state keys", labels=["partition", "kind"]
        )
        unsent = GaugeMetricFamily(
            "meter_outbox_pending_records", "Outputs awaiting publication", labels=["partition"]
        )
        now = self.observed.now()
        for state in self.observed.partition_states():
            p = str(state.partition)
            if state.close_wm is not None:
                wm.add_metric([p], state.close_wm / 1000)
                lag.add_metric([p], now - state.close_wm / 1000)
            if state.event_wm is not None:
                event_wm.add_metric([p], state.event_wm / 1000)
            for kind, n in state.state_sizes.items():
                keys.add_metric([p, kind], n)
            unsent.add_metric([p], state.unsent)
        yield wm
        yield event_wm
        yield lag
        yield keys
        yield unsent

    def _consumer_lag(self) -> GaugeMetricFamily:
        lag = GaugeMetricFamily(
            "meter_consumer_lag_records",
            "Records not yet read per assigned partition (high watermark minus read offset)",
            labels=["topic", "partition"],
        )
        for (topic, partition), n in sorted(self.observed.consumer_lag().items()):
            lag.add_metric([topic, str(partition)], n)
        return lag


def _add(
    used: GaugeMetricFamily,
    limit: GaugeMetricFamily,
    ratio: GaugeMetricFamily,
    u: CapUsage,
    subject: str,
) -> None:
    lab = [u.subject_type, subject, u.cap, u.metric, u.window]
    used.add_metric(lab, u.used)
    limit.add_metric(lab, u.limit)
    ratio.add_metric(lab, u.used / u.limit)


def _fold(other: dict[tuple[str, str, str], list[float]], u: CapUsage) -> None:
    """Subjects without a series of their own: summed usage and limit, worst utilization."""
    acc = other.setdefault((u.subject_type, u.cap, u.window), [0, 0, 0.0, u.metric == "calls"])
    acc[0] += u.used
    acc[1] += u.limit
    acc[2] = max(acc[2], u.used / u.limit)

"""Prometheus metrics of the alert sinks; they live in the registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

DELIVERED = "delivered"
RETRIED = "retried"
REJECTED = "rejected"


class SinkMetrics:
    """`meter_sink_deliveries_total{sink,outcome}`: alerts delivered, failed attempts that will be
    retried, alerts rejected for good; `meter_sink_lag_alerts{sink}`: alerts on the topic not yet
    delivered (as of the last fetch, this process's partitions); `meter_sink_active_alerts{sink}`:
    alerts the Alertmanager sink keeps re-sending until their window ends."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.deliveries = Counter(
            "meter_sink_deliveries",
            "Alert deliveries by sink and outcome (delivered, retried, rejected)",
            ["sink", "outcome"],
            registry=registry,
        )
        self.lag = Gauge(
            "meter_sink_lag_alerts",
            "Alerts on the alerts topic not yet delivered by the sink (this process's partitions)",
            ["sink"],
            registry=registry,
        )
        self.active = Gauge(
            "meter_sink_active_alerts",
            "Alerts kept firing in Alertmanager (re-sent until their window ends)",
            ["sink"],
            registry=registry,
        )

    def count(self, sink: str, outcome: str, n: int = 1) -> None:
        self.deliveries.labels(sink, outcome).inc(n)

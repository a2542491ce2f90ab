"""Alert sinks besides the `usage-alerts` topic: a signed webhook and Alertmanager.

Each sink reads the alerts topic with its own consumer group and commits only what it delivered.
Names load lazily, so that `meter` sub-commands can register the sink flags (`settings`) without
importing aiohttp and aiokafka.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meter.adapters.sinks.alertmanager import (
        ActiveAlerts,
        AlertmanagerSink,
        alert_annotations,
        alert_labels,
        to_alertmanager,
    )
    from meter.adapters.sinks.delivery import Backoff, DeliveryLoop, Sink
    from meter.adapters.sinks.errors import PermanentError, RetryableError, SinkError
    from meter.adapters.sinks.metrics import SinkMetrics
    from meter.adapters.sinks.records import AlertRecord, decode_alert
    from meter.adapters.sinks.service import SinkService
    from meter.adapters.sinks.settings import (
        SinkSettings,
        StartPosition,
        add_sink_arguments,
        is_enabled,
    )
    from meter.adapters.sinks.webhook import WebhookSink, signature, verify_signature

_HOME = MappingProxyType(
    {
        "ActiveAlerts": "alertmanager",
        "AlertmanagerSink": "alertmanager",
        "alert_annotations": "alertmanager",
        "alert_labels": "alertmanager",
        "to_alertmanager": "alertmanager",
        "Backoff": "delivery",
        "DeliveryLoop": "delivery",
        "Sink": "delivery",
        "PermanentError": "errors",
        "RetryableError": "errors",
        "SinkError": "errors",
        "SinkMetrics": "metrics",
        "AlertRecord": "records",
        "decode_alert": "records",
        "SinkService": "service",
        "SinkSettings": "settings",
        "StartPosition": "settings",
        "add_sink_arguments": "settings",
        "is_enabled": "settings",
        "WebhookSink": "webhook",
        "signature": "webhook",
        "verify_signature": "webhook",
    }
)

__all__ = [
    "ActiveAlerts",
    "AlertRecord",
    "AlertmanagerSink",
    "Backoff",
    "DeliveryLoop",
    "PermanentError",
    "RetryableError",
    "Sink",
    "SinkError",
    "SinkMetrics",
    "SinkService",
    "SinkSettings",
    "StartPosition",
    "WebhookSink",
    "add_sink_arguments",
    "alert_annotations",
    "alert_labels",
    "decode_alert",
    "is_enabled",
    "signature",
    "to_alertmanager",
    "verify_signature",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)

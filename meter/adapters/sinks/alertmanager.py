"""The Alertmanager sink: alerts POSTed to `/api/v2/alerts`, kept firing until their window ends.

An alert is sent with startsAt = the crossing event's time and endsAt = its window's end (but at
least `min_firing` after it was first sent, so that a late alert still notifies). Alertmanager keeps
alerts in memory only, so active alerts are re-sent every `resend` interval, and sent once more
when they end, which resolves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp

from meter.adapters.sinks.errors import PermanentError, SinkError
from meter.adapters.sinks.metrics import REJECTED, RETRIED, SinkMetrics
from meter.adapters.sinks.records import AlertRecord
from meter.adapters.sinks.transport import post_json
from meter.core.errors import EventError
from meter.core.events import parse_time
from meter.core.outputs import Json
from meter.core.windows import format_ms

log = logging.getLogger(__name__)

ALERT_NAMES = {
    "cap": "MeterCapThreshold",
    "unknown_app": "MeterUnknownApp",
    "unknown_app_flood": "MeterUnknownAppFlood",
    "restricted_use": "MeterRestrictedUse",
}
MAX_ALERTS_PER_POST = 500


def alert_name(kind: str) -> str:
    """`MeterCapThreshold`, `MeterUnknownApp`, `MeterRestrictedUse`; `Meter<Kind>` for others."""
    return ALERT_NAMES.get(kind) or "Meter" + "".join(p.capitalize() for p in kind.split("_"))


def _percent(ratio: float) -> str:
    return f"{ratio * 100:g}%"


def alert_labels(value: Json) -> dict[str, str]:
    """The label set of an alert. It identifies the alert like its meter id does (kind, subject,
    cap, window start, threshold, recipient). Labels without a value (`app` of an org subject,
    `org` of an app without one, `cap` and `threshold` of non-cap alerts) are left out, as
    Alertmanager drops empty labels anyway."""
    window = value["window"]
    subject_type = value["subject_type"]
    app = value["subject"] if subject_type == "app" else value.get("app_id")
    threshold = value.get("threshold")
    candidates: dict[str, object] = {
        "alertname": alert_name(value["kind"]),
        "severity": value["severity"],
        "org": value.get("org_id"),
        "app": app,
        "subject_type": subject_type,
        "subject": value["subject"],
        "cap": value.get("cap"),
        "window": window["size"],
        "window_start": window["start"],
        "threshold": None if threshold is None else f"{threshold:g}",
        "recipient": value.get("recipient"),
    }
    return {k: str(v) for k, v in candidates.items() if v is not None and v != ""}


def alert_annotations(value: Json) -> dict[str, str]:
    """summary and description for people; used, limit, window_end and meter_id for templates."""
    kind = value["kind"]
    window = value["window"]
    who = f"{value['subject_type']} {value['subject']}"
    span = f"the {window['size']} window {window['start']} to {window['end']}"
    when = f"crossed at {value['crossed_at']} by event {value.get('event_id')}"
    late = " The crossing event arrived after its window had closed." if value.get("late") else ""
    used = value.get("used")
    limit = value.get("limit")
    if kind == "cap":
        metric = value.get("metric", "calls")
        ratio = value.get("utilization", used / limit if used is not None and limit else 0)
        summary = (
            f"{who} reached {_percent(value['threshold'])} of cap {value['cap']}: "
            f"{used} of {limit} {metric} in {window['size']}"
        )
        description = (
            f"{who} used {used} of {limit} {metric} ({_percent(ratio)}) in {span}; the "
            f"{_percent(value['threshold'])} threshold was {when}.{late}"
        )
    elif kind == "unknown_app":
        org = value.get("org_id")
        summary = f"unknown app {value['subject']} is calling the API" + (
            f" (claims org {org})" if org else ""
        )
        description = (
            f"App {value['subject']} is not in the policy; its calls are still counted"
            f"{f' under org {org}' if org else ''}. First call in {span} {when}.{late}"
        )
    elif kind == "unknown_app_flood":
        summary = (
            f"more than {value.get('alerts_per_day')} unknown apps called the API on routed "
            f"partition {value.get('routed_partition')} in one day"
        )
        description = (
            f"Routed partition {value.get('routed_partition')} raised its "
            f"{value.get('alerts_per_day')} unknown-app alerts for {span}; further unknown apps "
            f"get no alert of their own until the day ends (their calls are still counted: see "
            f"meter_unknown_app_events_total). The first one past the limit {when}.{late}"
        )
    elif kind == "restricted_use":
        summary = (
            f"{who}: app {value.get('app_id')} sent data to restricted recipient "
            f"{value.get('recipient')}"
        )
        description = (
            f"Calls for recipient {value.get('recipient')} require a {value.get('rule')} on "
            f"file, which {who} does not have. First such call in {span} {when}.{late}"
        )
    else:
        summary = f"{who}: {kind} alert"
        description = f"{kind} alert for {who} in {span}, {when}.{late}"
    annotations = {
        "summary": summary,
        "description": description,
        "used": None if used is None else str(used),
        "limit": None if limit is None else str(limit),
        "window_end": window["end"],
        "meter_id": value.get("id"),
    }
    return {k: v for k, v in annotations.items() if v}


@dataclass(frozen=True, slots=True)
class Firing:
    """An alert as Alertmanager gets it, with the moment (epoch ms) it stops firing."""

    alert_id: str
    payload: Json
    ends_at_ms: int


def to_alertmanager(
    alert: AlertRecord, first_sent_ms: int, min_firing_ms: int, generator_url: str | None = None
) -> Firing:
    """The Alertmanager alert for `alert`; `PermanentError` if its fields cannot be mapped.

    endsAt is the window end, or `first_sent_ms + min_firing_ms` when that is later (a minimum of
    0 turns this off), and always after startsAt (Alertmanager refuses anything else)."""
    v = alert.value
    try:
        starts_ms = parse_time(v["crossed_at"])
        window_end_ms = parse_time(v["window"]["end"])
        labels = alert_labels(v)
        annotations = alert_annotations(v)
    except (KeyError, TypeError, ValueError, EventError) as exc:
        raise PermanentError(f"cannot map alert {alert.id} for Alertmanager: {exc!r}") from None
    ends_ms = max(window_end_ms, starts_ms + 1000)
    if min_firing_ms > 0:
        ends_ms = max(ends_ms, first_sent_ms + min_firing_ms)
    payload: Json = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": format_ms(starts_ms),
        "endsAt": format_ms(ends_ms),
    }
    if generator_url:
        payload["generatorURL"] = generator_url
    return Firing(alert.id, payload, ends_ms)


@dataclass(slots=True)
class _Entry:
    firing: Firing
    next_ms: int


@dataclass(frozen=True, slots=True)
class Due:
    """What to send now: alerts still firing (re-sent) and alerts whose end has come."""

    firing: list[Firing]
    ended: list[Firing]

    def __bool__(self) -> bool:
        return bool(self.firing or self.ended)


class ActiveAlerts:
    """Alerts Alertmanager should see firing, each due again every `resend_ms` and once at its
    end (that send resolves it; then it is forgotten). Pure state: the caller passes the time."""

    def __init__(self, resend_ms: int) -> None:
        self.resend_ms = resend_ms
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, alert_id: object) -> bool:
        return alert_id in self._entries

    def add(self, firing: Firing, now_ms: int, *, send_now: bool = False) -> bool:
        """Track an alert just sent (or, with `send_now`, one to send at once); False when it has
        already ended or is tracked already (a later end replaces the tracked one's)."""
        if firing.ends_at_ms <= now_ms:
            return False
        tracked = self._entries.get(firing.alert_id)
        if tracked is not None:
            if firing.ends_at_ms > tracked.firing.ends_at_ms:
                tracked.firing = firing
            return False
        first = now_ms if send_now else min(now_ms + self.resend_ms, firing.ends_at_ms)
        self._entries[firing.alert_id] = _Entry(firing, first)
        return True

    def due(self, now_ms: int) -> Due:
        firing: list[Firing] = []
        ended: list[Firing] = []
        for entry in self._entries.values():
            if entry.next_ms <= now_ms:
                (ended if entry.firing.ends_at_ms <= now_ms else firing).append(entry.firing)
        return Due(firing, ended)

    def sent(self, due: Due, now_ms: int, *, ok: bool) -> None:
        """Record the outcome of sending `due`: ended alerts are forgotten once sent; anything
        that failed is tried again after `resend_ms`."""
        for f in due.ended:
            if ok:
                self._entries.pop(f.alert_id, None)
            elif f.alert_id in self._entries:
                self._entries[f.alert_id].next_ms = now_ms + self.resend_ms
        for f in due.firing:
            entry = self._entries.get(f.alert_id)
            if entry is not None:
                entry.next_ms = min(now_ms + self.resend_ms, max(f.ends_at_ms, now_ms + 1))

    def forget(self, alert_id: str) -> None:
        self._entries.pop(alert_id, None)

    def next_due_ms(self) -> int | None:
        return min((e.next_ms for e in self._entries.values()), default=None)


class AlertmanagerSink:
    """Delivers alerts to Alertmanager; `keep_alive` re-sends and resolves them."""

    name = "alertmanager"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        metrics: SinkMetrics,
        resend_ms: int = 60_000,
        min_firing_ms: int = 300_000,
        generator_url: str | None = None,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.url = url
        self.endpoint = f"{url}/api/v2/alerts"
        self.metrics = metrics
        self.min_firing_ms = min_firing_ms
        self.generator_url = generator_url
        self.timeout_s = timeout_s
        self.clock = clock
        self.active = ActiveAlerts(resend_ms)
        self._changed = asyncio.Event()

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def post(self, alerts: Iterable[Firing]) -> None:
        items = [f.payload for f in alerts]
        for i in range(0, len(items), MAX_ALERTS_PER_POST):
            body = json.dumps(items[i : i + MAX_ALERTS_PER_POST], separators=(",", ":")).encode()
            await post_json(self.session, self.endpoint, body, {}, self.timeout_s)

    def _track(self, firing: Firing, now_ms: int, *, send_now: bool = False) -> None:
        if self.active.add(firing, now_ms, send_now=send_now):
            self.metrics.active.labels(self.name).set(len(self.active))
            self._changed.set()

    async def deliver(self, alert: AlertRecord) -> None:
        now = self._now_ms()
        firing = to_alertmanager(alert, now, self.min_firing_ms, self.generator_url)
        await self.post([firing])
        self._track(firing, now)

    def _restored(self, alert: AlertRecord) -> Firing | None:
        """An alert sent before a restart, as first sent when it was emitted."""
        try:
            return to_alertmanager(
                alert, alert.timestamp_ms, self.min_firing_ms, self.generator_url
            )
        except PermanentError:
            return None

    def may_be_firing(self, alert: AlertRecord) -> bool:
        firing = self._restored(alert)
        return firing is not None and firing.ends_at_ms > self._now_ms()

    def restore(self, alerts: Iterable[AlertRecord]) -> int:
        """Track alerts sent before a restart that may still be firing, to re-send them at
        once; returns how many."""
        now = self._now_ms()
        n = len(self.active)
        for alert in alerts:
            firing = self._restored(alert)
            if firing is not None:
                self._track(firing, now, send_now=True)
        return len(self.active) - n

    async def tick(self) -> int | None:
        """Send what is due now; returns when (epoch ms) something is due next, if anything."""
        now = self._now_ms()
        due = self.active.due(now)
        if due:
            await self._send_due(due)
        return self.active.next_due_ms()

    async def keep_alive(self) -> None:
        """Re-send firing alerts every resend interval and resolve ended ones, forever."""
        while True:
            self._changed.clear()  # before the tick: an alert added meanwhile wakes us at once
            wake = await self.tick()
            delay = None if wake is None else max(0.01, (wake - self._now_ms()) / 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), delay)

    async def _send_due(self, due: Due) -> None:
        try:
            await self.post([*due.firing, *due.ended])
        except PermanentError:
            # One alert Alertmanager refuses must not stop the others from being re-sent.
            for firing in [*due.firing, *due.ended]:
                await self._send_one(firing, due)
        except SinkError as exc:
            n = len(due.firing) + len(due.ended)
            log.warning("sink %s: re-sending %d alert(s) failed: %s", self.name, n, exc)
            self.metrics.count(self.name, RETRIED, n)
            self.active.sent(due, self._now_ms(), ok=False)
        else:
            if due.ended:
                log.info("sink %s: %d alert(s) resolved", self.name, len(due.ended))
            self.active.sent(due, self._now_ms(), ok=True)
        self.metrics.active.labels(self.name).set(len(self.active))

    async def _send_one(self, firing: Firing, due: Due) -> None:
        one = Due([firing], []) if firing in due.firing else Due([], [firing])
        try:
            await self.post([firing])
        except PermanentError as exc:
            log.error(
                "sink %s: alert %s refused, no longer re-sent: %s", self.name, firing.alert_id, exc
            )
            self.metrics.count(self.name, REJECTED)
            self.active.forget(firing.alert_id)
        except SinkError as exc:
            log.warning("sink %s: re-sending alert %s failed: %s", self.name, firing.alert_id, exc)
            self.metrics.count(self.name, RETRIED)
            self.active.sent(one, self._now_ms(), ok=False)
        else:
            self.active.sent(one, self._now_ms(), ok=True)

"""Counting one routed record: its events folded into their window slots, thresholds crossed
turned into alerts, and the once-a-day alerts (unknown app, restricted use).

Subject levels: an event normally counts for its app and its organisation. An app the policy does
not know may claim different organisations in different events; such an event reaches two
ledgers, at level "app" on the app's partition (app totals, the unknown-app alert) and at level
"org" on the claimed organisation's partition (org totals), so every state key has one owner.

Events are grouped first (by subject and the windows they fall in) and each group is added to a
slot once; events are looked at one by one, in arrival order, only where a threshold is crossed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from meter.core.durations import DAY_MS
from meter.core.events import ApiCall
from meter.core.ledger.cache import WriteBackCache
from meter.core.ledger.lifecycle import Horizons, Schedule
from meter.core.ledger.outbox import NO_ENDPOINT, OTHER, Pending
from meter.core.ledger.records import OPEN, Cells, DayMarker, WindowSlot
from meter.core.outputs import cap_alert, marker_alert, window_json
from meter.core.policy import Cap, Policy
from meter.core.windows import WindowSpec

UNKNOWN_APPS = "*"
"""The app subject unknown apps past the tracking limit are counted under."""
Levels = list[tuple[float, str, int]]
"""A cap's thresholds: (ratio, severity, the usage that reaches it)."""
SubjectKey = tuple[str, str]


@dataclass
class Stats:
    """What one record did, for metrics and logs."""

    events: int = 0
    duplicates: int = 0
    replayed: int = 0
    late: int = 0
    unknown_app: int = 0
    unknown_untracked: int = 0
    """Events of unknown apps past `max_unknown_apps`, counted under app `*`."""
    too_late: int = 0
    calls_by_org: dict[str, int] = field(default_factory=dict)
    records_by_org: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Context:
    """The record being applied and what applying it has done so far."""

    offset: int
    now_ms: int
    close_wm: int | None
    event_wm: int | None
    events: Sequence[ApiCall]
    levels: Sequence[str | None]
    stats: Stats = field(default_factory=Stats)
    touched: dict[str, WindowSlot] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)
    amended: set[str] = field(default_factory=set)
    markers: set[str] = field(default_factory=set)
    tracked: dict[str, bool] = field(default_factory=dict)
    outbox: list[Pending] = field(default_factory=list)


@dataclass(slots=True)
class Group:
    """Events of one subject that fall in the same windows, summed once."""

    events: list[ApiCall]
    calls: int = 0
    records: int = 0
    endpoints: Cells = field(default_factory=dict)
    recipients: Cells = field(default_factory=dict)
    capped: Cells = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SubjectCaps:
    by_window: dict[str, list[tuple[Cap, Levels]]]
    """Caps by window name, with their threshold levels."""
    of_window: dict[str, tuple[Cap, ...]]
    """Caps by window name."""
    filtered: list[Cap]
    """The caps that count only some events (endpoint or status filters)."""


def threshold_levels(cap: Cap) -> Levels:
    return [
        (t.ratio, t.severity, max(1, math.ceil(t.ratio * cap.limit - 1e-9))) for t in cap.thresholds
    ]


class Tally:
    """Counts records into the slots and markers of one partition's state."""

    def __init__(
        self,
        partition: int,
        policy: Policy,
        horizons: Horizons,
        state: WriteBackCache,
        schedule: Schedule,
        max_endpoints: int,
        max_recipients: int,
        unknown_app_alerts: int = 100,
        max_unknown_apps: int = 10_000,
    ) -> None:
        self.partition = partition
        self.policy = policy
        self.horizons = horizons
        self.state = state
        self.schedule = schedule
        self.max_endpoints = max_endpoints
        self.max_recipients = max_recipients
        self.unknown_app_alerts = unknown_app_alerts
        self.max_unknown_apps = max_unknown_apps
        self.restricted = frozenset(r.recipient for r in policy.restricted_uses)
        self._caps: dict[str, dict[str, SubjectCaps]] = {"app": {}, "org": {}}
        """Per subject type and subject: its caps (shared by every subject with the same)."""
        self._shared: dict[tuple[Cap, ...], SubjectCaps] = {}

    # -- caps ----------------------------------------------------------------------------------
    def caps_for(self, stype: str, subject: str) -> dict[str, list[tuple[Cap, Levels]]]:
        """The subject's caps by window name, with their threshold levels."""
        return self._subject_caps(stype, subject).by_window

    def _subject_caps(self, stype: str, subject: str) -> SubjectCaps:
        by_subject = self._caps[stype]
        cached = by_subject.get(subject)
        if cached is None:
            policy = self.policy
            caps = policy.app_caps(subject) if stype == "app" else policy.org_caps(subject)
            # Subjects of one tier have the same caps: one table for all of them (thousands of
            # subjects would otherwise hold a copy each).
            cached = self._shared.get(caps)
            if cached is None:
                by_window: dict[str, list[tuple[Cap, Levels]]] = {}
                for cap in caps:
                    by_window.setdefault(cap.window.name, []).append((cap, threshold_levels(cap)))
                cached = self._shared[caps] = SubjectCaps(
                    by_window,
                    {name: tuple(cap for cap, _ in levels) for name, levels in by_window.items()},
                    [cap for cap in caps if cap.filtered],
                )
            by_subject[subject] = cached
        return cached

    def window_caps(self, slot: WindowSlot) -> tuple[Cap, ...]:
        return self._subject_caps(slot.subject_type, slot.subject).of_window.get(slot.window, ())

    # -- counting ------------------------------------------------------------------------------
    def fold(self, ctx: Context, events: Sequence[ApiCall], levels: Sequence[str | None],
             fresh: set[int]) -> None:  # fmt: skip
        """Add the events (admitted and not too late) to their slots."""
        policy = self.policy
        windows = policy.windows
        stats = ctx.stats
        groups: dict[tuple[str, str, tuple[int, ...]], list[ApiCall]] = {}
        claimed: dict[SubjectKey, str | None] = {}
        for ev, level in zip(events, levels, strict=True):
            apps, orgs = level != "org", level != "app"
            org = policy.org_of(ev.app_id, ev.org_id)
            first = id(ev) in fresh
            if first and org is not None and orgs:
                stats.calls_by_org[org] = stats.calls_by_org.get(org, 0) + 1
                stats.records_by_org[org] = stats.records_by_org.get(org, 0) + ev.records
            t = ev.time_ms
            starts = tuple([spec.bucket(t).start_ms for spec in windows])
            if apps:
                app, app_org = ev.app_id, org
                if not policy.known_app(app):
                    stats.unknown_app += first
                    self._unknown_app(ctx, ev, org)
                    if not self._tracked(ctx, ev):
                        stats.unknown_untracked += first
                        app, app_org = UNKNOWN_APPS, None
                groups.setdefault(("app", app, starts), []).append(ev)
                claimed.setdefault(("app", app), app_org)
            if org is not None and orgs:
                groups.setdefault(("org", org, starts), []).append(ev)
                claimed.setdefault(("org", org), org)
            # A restricted-use alert belongs to the org if there is one, else to the app.
            if ev.recipient is not None and (orgs if org is not None else apps):
                self._check_recipient(ctx, ev, org)
        per_slot: dict[tuple[str, str, int, int], Group] = {}
        for (stype, subject, starts), evs in groups.items():
            group = self._sum(evs, self._filtered_caps(stype, subject))
            for i, start in enumerate(starts):
                known = per_slot.get((stype, subject, i, start))
                per_slot[(stype, subject, i, start)] = (
                    group if known is None else _merged(known, group)
                )
        late_events: set[int] = set()
        for (stype, subject, i, start), group in per_slot.items():
            spec = windows[i]
            found = self._slot(ctx, stype, subject, claimed[(stype, subject)], spec, start)
            if found is None:
                continue
            key, slot = found
            if slot.closed:
                late_events.update(id(ev) for ev in group.events)
            self._add(ctx, key, slot, spec, group)
        stats.late = len(late_events)

    def _filtered_caps(self, stype: str, subject: str) -> list[Cap]:
        return self._subject_caps(stype, subject).filtered

    def _sum(self, events: list[ApiCall], filtered: list[Cap]) -> Group:
        group = Group(events, calls=len(events))
        eps, rcps = group.endpoints, group.recipients
        records = 0
        for ev in events:
            n = ev.records
            records += n
            ep = ev.endpoint or NO_ENDPOINT
            cell = eps.get(ep)
            if cell is None:
                eps[ep] = [1, n]
            else:
                cell[0] += 1
                cell[1] += n
            if ev.recipient is not None:
                rule = self.policy.restricted_rule(ev.recipient)
                name = ev.recipient if rule is None else rule.recipient
                cell = rcps.get(name)
                if cell is None:
                    rcps[name] = [1, n]
                else:
                    cell[0] += 1
                    cell[1] += n
        group.records = records
        for cap in filtered:
            seq = [ev for ev in events if cap.matches(ev.endpoint, ev.status)]
            if seq:
                group.capped[cap.key] = [len(seq), sum(ev.records for ev in seq)]
        return group

    def _slot(
        self,
        ctx: Context,
        stype: str,
        subject: str,
        org: str | None,
        spec: WindowSpec,
        start: int,
    ) -> tuple[str, WindowSlot] | None:
        key = f"s|{stype}|{subject}|{spec.name}|{start}"
        slot = ctx.touched.get(key)
        if slot is not None:
            return key, slot
        if key in ctx.skipped:
            return None
        found = self.state.get(key)
        if isinstance(found, WindowSlot):
            if found.offset >= ctx.offset:
                ctx.skipped.add(key)  # this record was applied to it before a crash
                return None
            slot = found
        else:
            h, schedule = self.horizons, self.schedule
            end = spec.bucket(start).end_ms
            closed = ctx.close_wm is not None and h.close_due(end) <= ctx.close_wm
            compact = ctx.event_wm is not None and h.compact_due(end) <= ctx.event_wm
            # A window that closed without events has no revision 0: its first late event
            # publishes revision 1.
            slot = WindowSlot(
                self.partition, ctx.offset, stype, subject, org, spec.name, start, end,
                rev=0 if closed else OPEN, compact=compact,
            )  # fmt: skip
            if not closed:
                schedule.close_at(h.close_due(end), key)
            elif not compact:
                schedule.expire_at(h.compact_due(end), key)
            else:
                schedule.expire_at(h.forget_due(end), key)
        ctx.touched[key] = slot
        return key, slot

    def _add(
        self, ctx: Context, key: str, slot: WindowSlot, spec: WindowSpec, group: Group
    ) -> None:
        c0, r0 = slot.calls, slot.records
        slot.calls = c0 + group.calls
        slot.records = r0 + group.records
        _merge(slot.endpoints, group.endpoints, self.max_endpoints)
        _merge(slot.recipients, group.recipients, self.max_recipients, self.restricted)
        if slot.closed:
            slot.late += group.calls
            ctx.amended.add(key)
        for cap, levels in self.caps_for(slot.subject_type, slot.subject).get(spec.name, ()):
            calls = cap.metric == "calls"
            if cap.filtered:
                added = group.capped.get(cap.key)
                if added is None:
                    continue
                cell = slot.capped.setdefault(cap.key, [0, 0])
                before = cell[0] if calls else cell[1]
                cell[0] += added[0]
                cell[1] += added[1]
                after = cell[0] if calls else cell[1]
            else:
                before, after = (c0, slot.calls) if calls else (r0, slot.records)
            for ratio, severity, level in levels:
                tag = f"{cap.key}@{ratio}"
                if before < level <= after and tag not in slot.fired:
                    slot.fired.append(tag)
                    self._fire(ctx, key, slot, spec, cap, ratio, severity, level, before)

    def _fire(
        self,
        ctx: Context,
        key: str,
        slot: WindowSlot,
        spec: WindowSpec,
        cap: Cap,
        ratio: float,
        severity: str,
        level: int,
        before: int,
    ) -> None:
        """Alert on the event whose addition, in arrival order, first reached `level`."""
        calls = cap.metric == "calls"
        used = before
        crossing = None
        for ev in self._slot_events(ctx, slot, spec):
            if cap.filtered and not cap.matches(ev.endpoint, ev.status):
                continue
            used += 1 if calls else ev.records
            if used >= level:
                crossing = ev
                break
        if crossing is None:
            raise AssertionError("threshold not reached")  # the caller saw before < level <= after
        alert = cap_alert(
            subject_type=slot.subject_type, subject=slot.subject, org_id=slot.org,
            cap_key=cap.key, metric=cap.metric,
            window=window_json(slot.window, slot.start_ms, slot.end_ms),
            window_start_ms=slot.start_ms, limit=cap.limit, used=used, threshold=ratio,
            severity=severity, crossed_at_ms=crossing.time_ms, event_id=crossing.id,
            late=slot.closed, now_ms=ctx.now_ms,
        )  # fmt: skip
        slot.outbox.append(alert)
        ctx.outbox.append(Pending(key, alert))

    def _slot_events(self, ctx: Context, slot: WindowSlot, spec: WindowSpec) -> list[ApiCall]:
        """The record's events that count in `slot`, in arrival order."""
        out = []
        org_of = self.policy.org_of
        for ev, level in zip(ctx.events, ctx.levels, strict=True):
            if slot.subject_type == "app":
                if level == "org" or ev.app_id != slot.subject:
                    continue
            elif level == "app" or org_of(ev.app_id, ev.org_id) != slot.subject:
                continue
            if spec.bucket(ev.time_ms).start_ms == slot.start_ms:
                out.append(ev)
        return out

    # -- once-a-day alerts ---------------------------------------------------------------------
    def _check_recipient(self, ctx: Context, ev: ApiCall, org: str | None) -> None:
        rule = self.policy.restricted_violation(org, ev.recipient, ev.time_ms)
        if rule is None:
            return
        details = {"app_id": ev.app_id, "recipient": rule.recipient, "rule": rule.requires}
        stype, subject = ("org", org) if org is not None else ("app", ev.app_id)
        self._marker(ctx, Marker("restricted_use", rule.severity, stype, subject, org, details), ev)

    def _unknown_app(self, ctx: Context, ev: ApiCall, org: str | None) -> None:
        """One `unknown_app` alert per unknown app and UTC day, for the first
        `unknown_app_alerts` apps of the day on this partition. The next one raises a single
        `unknown_app_flood` alert for the partition and day instead, and later ones none: their
        events are counted all the same. A budget in the state (a `DayMarker` with a count), so
        which apps get an alert is the same through every restart and replay."""
        day = ev.time_ms - ev.time_ms % DAY_MS
        marker = Marker("unknown_app", "warning", "app", ev.app_id, org)
        if self._marked(ctx, marker.key(day)):
            return
        budget_key = f"m|unknown_app_budget|{self.partition}|{day}"
        raised = self._count(budget_key)
        if raised > self.unknown_app_alerts:
            return
        self._count_one(budget_key, day, raised)
        if raised < self.unknown_app_alerts:
            self._raise(ctx, marker, ev)
        else:
            details = {"routed_partition": str(self.partition),
                       "alerts_per_day": str(self.unknown_app_alerts)}  # fmt: skip
            self._marker(
                ctx, Marker("unknown_app_flood", "critical", "app", "*", None, details), ev
            )

    def _tracked(self, ctx: Context, ev: ApiCall) -> bool:
        """Whether an unknown app is counted under its own id: the first `max_unknown_apps`
        distinct unknown apps of a UTC month on this partition are, later ones are counted
        together as app `*`, so that a flood of made-up ids cannot fill the worker's memory with
        windows. Decided once per app and month and kept in the state (the decision is written
        before the windows it leads to: `WriteBackCache.flush`), so replays decide the same."""
        month, month_end = utc_month(ev.time_ms)
        key = f"m|unknown_app_tracked|{ev.app_id}|{month}"
        known = ctx.tracked.get(key)
        if known is not None:
            return known
        tracked = self.state.get(key) is not None
        if not tracked:
            budget_key = f"m|unknown_app_tracking|{self.partition}|{month}"
            n = self._count(budget_key)
            if n < self.max_unknown_apps:
                last_day = month_end - DAY_MS
                self._count_one(budget_key, last_day, n)
                self._count_one(key, last_day, 0)
                tracked = True
        ctx.tracked[key] = tracked
        return tracked

    def _count(self, key: str) -> int:
        """A count kept in the state (a `DayMarker` with `count`): 0 if there is none yet."""
        found = self.state.get(key)
        return found.count if isinstance(found, DayMarker) else 0

    def _count_one(self, key: str, day: int, n: int) -> None:
        """Count `key` from `n` to n + 1; the count is forgotten with day `day`."""
        self.state.put(key, DayMarker(self.partition, day, [], n + 1))
        if n == 0:
            self.schedule.expire_at(self.horizons.forget_due(day + DAY_MS), key)

    def _marked(self, ctx: Context, key: str) -> bool:
        """Whether the marker `key` was raised already (by this record or before it); from now
        on it is (by this record)."""
        if key in ctx.markers:
            return True
        ctx.markers.add(key)
        return self.state.get(key) is not None

    def _marker(self, ctx: Context, marker: Marker, ev: ApiCall) -> None:
        """Raise a once-per-subject-per-UTC-day alert, remembered until the history horizon has
        passed its day: no later event can raise it again."""
        if not self._marked(ctx, marker.key(ev.time_ms - ev.time_ms % DAY_MS)):
            self._raise(ctx, marker, ev)

    def _raise(self, ctx: Context, marker: Marker, ev: ApiCall) -> None:
        """The alert of a marker not raised before, and the marker that remembers it."""
        day = ev.time_ms - ev.time_ms % DAY_MS
        key = marker.key(day)
        h = self.horizons
        late = ctx.close_wm is not None and h.close_due(day + DAY_MS) <= ctx.close_wm
        alert = marker_alert(
            kind=marker.kind, severity=marker.severity, subject_type=marker.subject_type,
            subject=marker.subject, org_id=marker.org, day_start_ms=day, day_end_ms=day + DAY_MS,
            crossed_at_ms=ev.time_ms, event_id=ev.id, late=late, now_ms=ctx.now_ms,
            details=marker.details,
        )  # fmt: skip
        self.state.put(key, DayMarker(self.partition, day, [alert]))
        self.schedule.expire_at(h.forget_due(day + DAY_MS), key)
        ctx.outbox.append(Pending(key, alert))


@dataclass(frozen=True, slots=True)
class Marker:
    """A once-per-day alert: what it is about."""

    kind: str
    severity: str
    subject_type: str
    subject: str
    org: str | None
    details: dict[str, str] = field(default_factory=dict)

    def key(self, day: int) -> str:
        return (
            f"m|{self.kind}|{self.subject_type}|{self.subject}|"
            f"{'|'.join(self.details.values())}|{day}"
        )


@functools.lru_cache(maxsize=64)
def _month_of_day(day: int) -> tuple[int, int]:
    d = datetime.fromtimestamp(day * DAY_MS / 1000, tz=UTC)
    start = datetime(d.year, d.month, 1, tzinfo=UTC)
    end = datetime(d.year + d.month // 12, d.month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def utc_month(t_ms: int) -> tuple[int, int]:
    """The UTC calendar month of `t_ms`: (start, end) in epoch ms."""
    return _month_of_day(t_ms // DAY_MS)


def _merge(cells: Cells, added: Cells, limit: int, keep: frozenset[str] = frozenset()) -> None:
    """Add a breakdown; beyond `limit` entries, new names fold into "(other)" (names in `keep`
    never do)."""
    for name, (c, r) in added.items():
        cell = cells.get(name)
        if cell is None:
            target = OTHER if len(cells) >= limit and name not in keep else name
            cell = cells.get(target)
            if cell is None:
                cell = cells[target] = [0, 0]
        cell[0] += c
        cell[1] += r


def _merged(a: Group, b: Group) -> Group:
    out = Group(a.events + b.events, a.calls + b.calls, a.records + b.records)
    for name in ("endpoints", "recipients", "capped"):
        target: Cells = getattr(out, name)
        for source in (getattr(a, name), getattr(b, name)):
            for k, (c, r) in source.items():
                cell = target.setdefault(k, [0, 0])
                cell[0] += c
                cell[1] += r
    return out

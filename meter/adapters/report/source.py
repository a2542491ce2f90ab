"""The facts of a statement, read from the usage store as of an ingest cut: volumes through the
store's `usage` query (exact sums of stored windows), windows, monthly caps, alerts and evidence
digests through `statement_queries`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from meter.adapters.store.database import Database
from meter.adapters.store.queries import QueryError, UsagePage, UsageQuery, UsageRow, usage
from meter.adapters.store.statement_queries import (
    event_time_seen,
    ingest_cut,
    month_caps,
    org_alerts,
    window_evidence,
    window_facts,
)
from meter.core.policy import Policy
from meter.core.statement import (
    CapUse,
    Rules,
    StatementError,
    StatementFacts,
    Volume,
    check_period,
    contract_month,
    local_date,
    month_slices,
    zone,
)

__all__ = ["StatementRequest", "collect"]

_NOTHING = -1
"""The cut when the store holds nothing yet: no ingest time is at or before it."""


@dataclass(frozen=True)
class StatementRequest:
    """An organisation's statement over [from_ms, to_ms) (local midnights of `tz`), counting
    what the store had ingested by `as_of_ms` (None: everything it holds)."""

    org_id: str
    from_ms: int
    to_ms: int
    tz: str = "UTC"
    as_of_ms: int | None = None


class _Reader:
    """`usage` pages as of one cut, every page of each query; remembers the source sizes."""

    def __init__(self, db: Database, request: StatementRequest, cut: int) -> None:
        self.db = db
        self.request = request
        self.cut = cut
        self.sizes: set[str] = set()
        self.last_source: str | None = None

    def rows(self, q: UsageQuery) -> Iterator[UsageRow]:
        q = replace(q, as_of_ms=self.cut, org_id=self.request.org_id, limit=10_000)
        while True:
            try:
                page: UsagePage = usage(self.db, q)
            except QueryError as exc:
                param = exc.param if exc.param in ("from", "to", "tz") else "tz"
                raise StatementError(param, exc.message) from None
            self.last_source = page.source_window
            if page.source_window is not None:
                self.sizes.add(page.source_window)
            yield from page.rows
            if page.next_cursor is None:
                return
            q = replace(q, cursor=page.next_cursor)

    def volumes(
        self,
        subject_type: str,
        from_ms: int,
        to_ms: int,
        group_by: tuple[str, ...] = ("subject",),
        top: int | None = None,
    ) -> Iterator[UsageRow]:
        """One bucket over [from_ms, to_ms): the organisation itself, or its apps."""
        subjects = (self.request.org_id,) if subject_type == "org" else ()
        q = UsageQuery(
            subject_type=subject_type,
            from_ms=from_ms,
            to_ms=to_ms,
            window=None,
            subjects=subjects,
            group_by=group_by,
            top=top,
        )
        return self.rows(q)


def _volume(rows: Iterator[UsageRow]) -> Volume:
    total = Volume()
    for r in rows:
        total += Volume(r.calls or 0, r.records or 0)
    return total


def _check_request(policy: Policy, r: StatementRequest) -> None:
    if r.org_id not in policy.orgs:
        raise StatementError("org_id", f"no organisation {r.org_id!r} in the policy")
    check_period(r.from_ms, r.to_ms)
    tz = zone(r.tz)
    for name, ms in (("from", r.from_ms), ("to", r.to_ms)):
        day = local_date(ms, tz)
        if local_date(ms - 1, tz) == day:
            raise StatementError(name, f"must be a midnight in {r.tz} (statements cover days)")


def collect(
    db: Database,
    policy: Policy,
    request: StatementRequest,
    rules: Rules,
    *,
    policy_sha256: str,
    generator: tuple[str, str],
) -> StatementFacts:
    _check_request(policy, request)
    r = request
    org = policy.orgs[r.org_id]
    cut = ingest_cut(db, r.as_of_ms)
    at = _NOTHING if cut is None else cut
    read = _Reader(db, r, at)
    contract = contract_month(policy, r.org_id, r.tz)
    months = month_slices(contract.window, r.from_ms, r.to_ms)

    totals = _volume(read.volumes("org", r.from_ms, r.to_ms))
    source = read.last_source
    by_app: dict[str, Volume] = {}
    for row in read.volumes("app", r.from_ms, r.to_ms):
        by_app[str(row.subject)] = Volume(row.calls or 0, row.records or 0)
    endpoints = [
        (row.dimensions["endpoint"], Volume(row.calls or 0, row.records or 0))
        for row in read.volumes("org", r.from_ms, r.to_ms, group_by=("endpoint",), top=rules.top)
    ]
    rule_names = {u.recipient for u in policy.restricted_uses}
    month_totals: dict[str, Volume] = {}
    app_months: dict[tuple[str, str], Volume] = {}
    recipient_months: dict[tuple[str, str, str], Volume] = {}
    for m in months:
        month_totals[m.label] = _volume(read.volumes("org", m.start_ms, m.end_ms))
        for row in read.volumes("app", m.start_ms, m.end_ms):
            app_months[(str(row.subject), m.label)] = Volume(row.calls or 0, row.records or 0)
        if rule_names:
            for row in read.volumes("app", m.start_ms, m.end_ms, group_by=("subject", "recipient")):
                name = row.dimensions["recipient"]
                if name in rule_names:
                    key = (name, m.label, str(row.subject))
                    recipient_months[key] = Volume(row.calls or 0, row.records or 0)
    recipient_days: dict[tuple[str, str, str], Volume] = {}
    if rule_names:
        q = UsageQuery(
            subject_type="app",
            from_ms=r.from_ms,
            to_ms=r.to_ms,
            window="1d",
            tz=r.tz,
            group_by=("subject", "recipient"),
        )
        tz = zone(r.tz)
        for row in read.rows(q):
            name = row.dimensions["recipient"]
            if name in rule_names and (row.calls or row.records):
                key = (local_date(row.from_ms, tz), name, str(row.subject))
                recipient_days[key] = Volume(row.calls or 0, row.records or 0)

    caps_by_start = month_caps(db, r.org_id, contract.window.name, r.from_ms, r.to_ms, at)
    month_caps_by_label: dict[str, list[CapUse]] = {
        m.label: caps_by_start[m.month_start_ms]
        for m in months
        if m.month_start_ms in caps_by_start
    }
    sizes = set(read.sizes) | ({contract.window.name} if caps_by_start else set())
    alerts, alert_digest = org_alerts(db, r.org_id, r.from_ms, r.to_ms, at)
    return StatementFacts(
        org_id=r.org_id,
        org_name=org.name,
        government_notice_ms=org.government_notice_ms,
        from_ms=r.from_ms,
        to_ms=r.to_ms,
        tz=r.tz,
        contract=contract,
        rules=rules,
        as_of_ms=cut,
        event_time_seen_ms=None if cut is None else event_time_seen(db, cut),
        policy_sha256=policy_sha256,
        generator=generator,
        known_apps={a.id: a.name for a in policy.apps.values() if a.org_id == r.org_id},
        restricted=policy.restricted_uses,
        totals=totals,
        by_app=by_app,
        months=months,
        month_totals=month_totals,
        app_months=app_months,
        month_caps=month_caps_by_label,
        endpoints=endpoints,
        recipient_months=recipient_months,
        recipient_days=recipient_days,
        alerts=alerts,
        windows=[]
        if source is None
        else window_facts(db, r.org_id, source, r.from_ms, r.to_ms, at),
        source_window=source,
        window_inputs=window_evidence(db, r.org_id, sorted(sizes), r.from_ms, r.to_ms, at),
        window_sizes=tuple(sorted(sizes)),
        alert_inputs=alert_digest,
    )

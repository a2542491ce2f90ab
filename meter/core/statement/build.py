"""A usage statement from its facts: a JSON document of integers and strings only, in a fixed
shape (see `SECTIONS`), so that the same facts always give the same bytes."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from meter.core.durations import format_duration
from meter.core.statement.canonical import KIND, VERSION
from meter.core.statement.facts import AlertFact, StatementFacts, Volume
from meter.core.statement.policy_doc import ratio_text
from meter.core.windows import format_ms

__all__ = ["DIGEST_FORMAT", "FINAL", "PROVISIONAL", "build_statement", "utilization"]

OTHER = "(other)"
FINAL = "final"
PROVISIONAL = "provisional"
DIGEST_FORMAT = (
    "sha256 of the lines '<id> <revision> <payload sha256>' (windows) or '<id> <payload "
    "sha256>' (alerts), each ending in a newline, sorted by id"
)
Json = dict[str, Any]


def utilization(used: int, limit: int) -> str:
    """used / limit as a decimal string with four places, computed exactly."""
    return f"{Decimal(used) / Decimal(limit):.4f}"


def _volume(v: Volume) -> Json:
    return {"calls": v.calls, "records": v.records}


def _time(ms: int | None) -> str | None:
    return None if ms is None else format_ms(ms)


def final_after(f: StatementFacts) -> int:
    """Event time from which no window of the period (nor a monthly cap's month that reaches
    into it) can change any more."""
    last = max([f.to_ms, *(m.month_end_ms for m in f.months)])
    return f.rules.forget_due(last)


def _apps(f: StatementFacts) -> list[Json]:
    ids = sorted(set(f.known_apps) | set(f.by_app))
    return [{"id": a, "name": f.known_apps.get(a, a), "known": a in f.known_apps} for a in ids]


def _by_app(f: StatementFacts) -> list[Json]:
    rows = sorted(f.by_app.items(), key=lambda kv: (-kv[1].records, -kv[1].calls, kv[0]))
    return [{"app": a, **_volume(v)} for a, v in rows]


def _by_month(f: StatementFacts) -> list[Json]:
    out = []
    for m in f.months:
        caps = sorted(f.month_caps.get(m.label, []), key=lambda c: c.cap)
        out.append(
            {
                "month": m.label,
                "from": format_ms(m.start_ms),
                "to": format_ms(m.end_ms),
                "partial": m.partial,
                **_volume(f.month_totals.get(m.label, Volume())),
                "caps": [
                    {
                        "cap": c.cap,
                        "metric": c.metric,
                        "limit": c.limit,
                        "used": c.used,
                        "utilization": utilization(c.used, c.limit),
                    }
                    for c in caps
                ],
            }
        )
    return out


def _by_app_month(f: StatementFacts, apps: list[str]) -> list[Json]:
    return [
        {"month": m.label, "app": a, **_volume(f.app_months.get((a, m.label), Volume()))}
        for m in f.months
        for a in apps
    ]


def _by_endpoint(f: StatementFacts) -> Json:
    ranked = sorted(f.endpoints, key=lambda e: (e[0] == OTHER, -e[1].calls, e[0]))
    rows = [{"endpoint": name, **_volume(v)} for name, v in ranked]
    return {"ranked_by": "calls", "top": f.rules.top, "rows": rows}


def _crossing(a: AlertFact) -> Json:
    return {
        "id": a.id,
        "subject_type": a.subject_type,
        "subject": a.subject,
        "cap": a.cap,
        "metric": a.metric,
        "threshold": None if a.threshold is None else ratio_text(a.threshold),
        "severity": a.severity,
        "window": {
            "size": a.window_size,
            "start": format_ms(a.window_start_ms),
            "end": format_ms(a.window_end_ms),
        },
        "crossed_at": format_ms(a.crossed_at_ms),
        "used": a.used,
        "limit": a.limit,
        "late": a.late,
    }


def _apps_of(cells: dict[str, Volume]) -> list[Json]:
    ordered = sorted(cells.items(), key=lambda kv: (-kv[1].records, -kv[1].calls, kv[0]))
    return [{"app": a, **_volume(v)} for a, v in ordered if v.calls or v.records]


def _restricted(f: StatementFacts) -> Json:
    recipients = [r.recipient for r in f.restricted]
    totals: dict[str, Volume] = {r: Volume() for r in recipients}
    months: dict[tuple[str, str], dict[str, Volume]] = {}
    for (recipient, month, app), v in f.recipient_months.items():
        totals[recipient] = totals.get(recipient, Volume()) + v
        cell = months.setdefault((recipient, month), {})
        cell[app] = cell.get(app, Volume()) + v
    by_month = []
    for recipient in sorted(totals):
        for m in f.months:
            apps = months.get((recipient, m.label), {})
            total = sum(apps.values(), Volume())
            by_month.append(
                {"recipient": recipient, "month": m.label, **_volume(total), "apps": _apps_of(apps)}
            )
    days: dict[tuple[str, str], dict[str, Volume]] = {}
    for (day, recipient, app), v in f.recipient_days.items():
        cell = days.setdefault((day, recipient), {})
        cell[app] = cell.get(app, Volume()) + v
    day_rows = []
    for (day, recipient), apps in sorted(days.items()):
        total = sum(apps.values(), Volume())
        if total.calls or total.records:
            day_rows.append(
                {"date": day, "recipient": recipient, **_volume(total), "apps": _apps_of(apps)}
            )
    alerts = [
        {
            "id": a.id,
            "date": format_ms(a.window_start_ms)[:10],
            "app": a.app_id or a.subject,
            "recipient": a.recipient,
            "rule": a.rule,
            "severity": a.severity,
            "crossed_at": format_ms(a.crossed_at_ms),
            "late": a.late,
        }
        for a in f.alerts
        if a.kind == "restricted_use"
    ]
    return {
        "rules": [
            {"recipient": r.recipient, "requires": r.requires, "severity": r.severity}
            for r in f.restricted
        ],
        "government_notice": _time(f.government_notice_ms),
        "totals": [{"recipient": r, **_volume(totals[r])} for r in sorted(totals)],
        "by_month": by_month,
        "days": day_rows,
        "alerts": alerts,
    }


def _quality(f: StatementFacts) -> Json:
    seen = f.event_time_seen_ms
    changeable = [w for w in f.windows if seen is None or f.rules.forget_due(w.end_ms) > seen]
    attributed = sum(f.by_app.values(), Volume())
    return {
        "source_window": f.source_window,
        "windows": len(f.windows),
        "late_events": sum(w.late_events for w in f.windows),
        "amended_windows": sum(1 for w in f.windows if w.revision > 0),
        "expired_windows": sum(1 for w in f.windows if w.base == "expired"),
        "provisional_windows": len(changeable),
        "event_time_seen": _time(seen),
        "unattributed": _volume(f.totals - attributed),
        "unknown_apps": sorted(a for a in f.by_app if a not in f.known_apps),
    }


def build_statement(f: StatementFacts) -> Json:
    """The statement document (see the README's *Usage statements* for each section)."""
    due = final_after(f)
    final = f.event_time_seen_ms is not None and f.event_time_seen_ms >= due
    apps = [a["id"] for a in _apps(f)]
    window = f.contract.window
    return {
        "kind": KIND,
        "version": VERSION,
        "org": {
            "id": f.org_id,
            "name": f.org_name,
            "government_notice": _time(f.government_notice_ms),
        },
        "period": {
            "from": format_ms(f.from_ms),
            "to": format_ms(f.to_ms),
            "tz": f.tz,
            "contract_month": {
                "window": window.name,
                "reset_day": window.reset_day,
                "timezone": window.timezone,
                "cap": f.contract.cap,
            },
        },
        "rules": {
            "grace": format_duration(f.rules.grace_ms),
            "late_horizon": format_duration(f.rules.late_horizon_ms),
            "history_horizon": format_duration(f.rules.history_horizon_ms),
            "top_endpoints": f.rules.top,
        },
        "as_of": _time(f.as_of_ms),
        "status": FINAL if final else PROVISIONAL,
        "final_after": format_ms(due),
        "supersedes": f.supersedes,
        "policy": {"sha256": f.policy_sha256},
        "generator": {"name": f.generator[0], "version": f.generator[1]},
        "apps": _apps(f),
        "totals": _volume(f.totals),
        "by_app": _by_app(f),
        "by_month": _by_month(f),
        "by_app_month": _by_app_month(f, apps),
        "by_endpoint": _by_endpoint(f),
        "caps_crossed": [_crossing(a) for a in f.alerts if a.kind == "cap"],
        "restricted_use": _restricted(f),
        "data_quality": _quality(f),
        "inputs": {
            "windows": {
                "sizes": list(f.window_sizes),
                "count": f.window_inputs.count,
                "sha256": f.window_inputs.sha256,
            },
            "alerts": {"count": f.alert_inputs.count, "sha256": f.alert_inputs.sha256},
            "format": DIGEST_FORMAT,
        },
    }

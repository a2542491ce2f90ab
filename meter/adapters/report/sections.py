"""The parts of the HTML statement (`page`): helpers, and the sections that are mostly tables
(apps, restricted use with its timeline, cap crossings, months, data quality, how to verify)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from html import escape
from typing import Any

from meter.adapters.report.naming import period_dates, stem
from meter.adapters.report.svg import PALETTE, Lane, timeline

__all__ = [
    "apps_order",
    "by_app",
    "caps",
    "legend",
    "month_label",
    "n",
    "pivot",
    "quality",
    "restricted",
    "verify",
]

Json = dict[str, Any]
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def n(value: int) -> str:
    return f"{value:,}"


def _minute(instant: str) -> str:
    """'2022-03-04T10:15:07Z' -> '2022-03-04 10:15'."""
    return instant[:16].replace("T", " ")


def month_label(label: str, first: bool) -> str:
    year, month = label.split("-")
    name = MONTHS[int(month) - 1]
    return f"{name} {year[2:]}" if first or month == "01" else name


def _table(
    head: Sequence[str],
    rows: Iterable[Sequence[Any]],
    numeric: Sequence[bool],
    total: Sequence[Any] | None = None,
    cls: str = "",
) -> str:
    def cells(row: Sequence[Any], tag: str) -> str:
        out = []
        for value, num in zip(row, numeric, strict=True):
            text = n(value) if isinstance(value, int) and not isinstance(value, bool) else value
            cls = ' class="n"' if num else ""
            out.append(f"<{tag}{cls}>{text}</{tag}>")
        return "".join(out)

    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    foot = f'<tr class="total">{cells(total, "td")}</tr>' if total is not None else ""
    klass = f' class="{cls}"' if cls else ""
    return (
        f'<div class="scroll"><table{klass}><tr>{cells(head, "th")}</tr>{body}{foot}</table></div>'
    )


def apps_order(doc: Json) -> list[str]:
    """Apps by records, largest first: the order of stacks, legends and colours."""
    return [r["app"] for r in doc["by_app"]] + [
        a["id"] for a in doc["apps"] if a["id"] not in {r["app"] for r in doc["by_app"]}
    ]


def _colours(doc: Json) -> dict[str, str]:
    return {app: PALETTE[i % len(PALETTE)] for i, app in enumerate(apps_order(doc))}


def legend(doc: Json, extra: str = "") -> str:
    colours = _colours(doc)
    items = "".join(
        f'<span><i style="background:{c}"></i>{escape(a)}</span>' for a, c in colours.items()
    )
    return f'<div class="legend">{items}{extra}</div>'


def by_app(doc: Json) -> str:
    total = doc["totals"]
    names = {a["id"]: a for a in doc["apps"]}
    peak = max([r["records"] for r in doc["by_app"]] + [1])
    rows = []
    for r in doc["by_app"]:
        app = names.get(r["app"], {"name": r["app"], "known": False})
        share = 100 * r["records"] / total["records"] if total["records"] else 0.0
        bar = f'<span class="share" style="width:{120 * r["records"] / peak:.1f}px"></span>'
        name = escape(app["name"]) + (
            "" if app["known"] else ' <span class="warn">not in the policy</span>'
        )
        rows.append(
            [
                f"<code>{escape(r['app'])}</code>",
                name,
                r["calls"],
                r["records"],
                f"{share:.1f}%",
                bar,
            ]
        )
    table = _table(
        ["app", "name", "calls", "records", "share", ""],
        rows,
        [False, False, True, True, True, False],
        ["total", "", total["calls"], total["records"], "", ""],
    )
    return f"<section><h2>By app</h2>{table}</section>"


def _subjects(names: Sequence[str]) -> str:
    """Up to three names; more as a count, listed on hover."""
    listed = escape(", ".join(names))
    if len(names) <= 3:
        return listed
    return f'<span title="{listed}">{len(names)} subjects</span>'


def caps(doc: Json) -> str:
    crossed = doc["caps_crossed"]
    if not crossed:
        return "<section><h2>Cap crossings</h2><p>No cap threshold was crossed.</p></section>"
    groups: dict[tuple[str, str], list[Json]] = {}
    for c in crossed:
        groups.setdefault((c["cap"], c["threshold"]), []).append(c)
    summary = _table(
        ["cap", "threshold", "severity", "crossings", "subjects", "first", "last"],
        [
            [
                f"<code>{escape(cap)}</code>",
                f"{float(th) * 100:g}%",
                escape(cs[0]["severity"]),
                len(cs),
                _subjects(sorted({c["subject"] for c in cs})),
                f'<span class="nw">{_minute(cs[0]["crossed_at"])}</span>',
                f'<span class="nw">{_minute(cs[-1]["crossed_at"])}</span>',
            ]
            for (cap, th), cs in sorted(groups.items())
        ],
        [False, True, False, True, False, False, False],
    )
    full = _table(
        ["crossed at", "subject", "cap", "at", "window", "used", "limit", ""],
        [
            [
                c["crossed_at"],
                escape(f"{c['subject_type']} {c['subject']}"),
                escape(c["cap"]),
                f"{float(c['threshold']) * 100:g}%",
                f"{c['window']['size']} from {c['window']['start']}",
                c["used"],
                c["limit"],
                "late" if c["late"] else "",
            ]
            for c in crossed
        ],
        [False, False, False, True, False, True, True, False],
    )
    return (
        f"<section><h2>Cap crossings</h2>{summary}<details><summary>Every crossing "
        f"({len(crossed):,})</summary>{full}</details></section>"
    )


def pivot(doc: Json) -> str:
    months = [m["month"] for m in doc["by_month"]]
    parts = []
    for metric in ("records", "calls"):
        cell = {(r["app"], r["month"]): r[metric] for r in doc["by_app_month"]}
        rows = [
            [
                f"<code>{escape(a)}</code>",
                *(cell.get((a, m), 0) for m in months),
                sum(cell.get((a, m), 0) for m in months),
            ]
            for a in apps_order(doc)
        ]
        total = ["all apps", *(sum(cell.get((a, m), 0) for a in apps_order(doc)) for m in months)]
        total.append(sum(v for v in total[1:] if isinstance(v, int)))
        head = ["app", *(month_label(m, i == 0) for i, m in enumerate(months)), "total"]
        parts.append(
            f"<h3>{metric.capitalize()}</h3>"
            + _table(head, rows, [False] + [True] * (len(months) + 1), total, "pivot")
        )
    caps = sorted({c["cap"] for m in doc["by_month"] for c in m["caps"]})
    rows = []
    for m in doc["by_month"]:
        by_cap = {c["cap"]: c for c in m["caps"]}
        used = [
            f"{by_cap[c]['used']:,} of {by_cap[c]['limit']:,} "
            f"({float(by_cap[c]['utilization']) * 100:.1f}%)"
            if c in by_cap
            else "-"
            for c in caps
        ]
        span = f"{_minute(m['from'])} to {_minute(m['to'])}"
        rows.append([m["month"] + (" (part)" if m["partial"] else ""), span, m["calls"],
                     m["records"], *used])  # fmt: skip
    months_table = _table(
        [
            "month",
            "from, to (UTC)",
            "calls",
            "records",
            *(f"<code>{escape(c)}</code>" for c in caps),
        ],
        rows,
        [False, False, True, True, *([True] * len(caps))],
    )
    return (
        f"<section><h2>Contract months</h2>{months_table}</section>"
        f"<section><h2>By app and contract month</h2>{''.join(parts)}</section>"
    )


def quality(doc: Json) -> str:
    q = doc["data_quality"]
    items = [
        ("totals summed from", f"{q['windows']:,} stored windows of {q['source_window'] or '-'}"),
        ("late events", f"{q['late_events']:,} (counted after their window had closed)"),
        ("amended windows", f"{q['amended_windows']:,} (re-published with late events)"),
        (
            "expired deltas",
            f"{q['expired_windows']:,} windows whose breakdowns add a compacted "
            "window's later events",
        ),
        ("provisional windows", f"{q['provisional_windows']:,} can still change"),
        ("event time seen", q["event_time_seen"] or "-"),
        ("not attributed to an app", f"{q['unattributed']['calls']:,} calls"),
        ("apps not in the policy", ", ".join(q["unknown_apps"]) or "none"),
    ]
    body = "".join(f"<dt>{k}</dt><dd>{escape(v)}</dd>" for k, v in items)
    return f"<section><h2>Data quality</h2><dl>{body}</dl></section>"


def verify(doc: Json, sid: str) -> str:
    name = stem(doc, sid)
    inputs = doc["inputs"]
    w, a = inputs["windows"], inputs["alerts"]
    return (
        "<section><h2>Verify this statement</h2>"
        f"<p>The statement is the file <code>{name}.json</code>: canonical JSON (RFC 8785). Its "
        "SHA-256 is its id:</p>"
        f'<code class="digest">{sid}</code>'
        "<p>This page is drawn from that file alone. To check it:</p>"
        "<pre># the id: prints the digest above\n"
        f"sha256sum {name}.json\n\n"
        f"# canonical form, id and signature (read from {name}.sig.json when there)\n"
        f"meter report verify {name}.json \\\n    --id {sid}\n\n"
        "# rebuild it from the usage store as of its cut: names the first section that differs\n"
        f"meter report verify {name}.json \\\n    --database URL --policy POLICY</pre>"
        f"<dl><dt>window records</dt><dd>{w['count']:,} ({escape(', '.join(w['sizes']))}), "
        f'sha256 <span class="mono">{w["sha256"]}</span></dd>'
        f'<dt>alerts</dt><dd>{a["count"]:,}, sha256 <span class="mono">{a["sha256"]}</span></dd>'
        f'<dt>policy</dt><dd>sha256 <span class="mono">{doc["policy"]["sha256"]}</span></dd>'
        f"<dt>digest of inputs</dt><dd>{escape(inputs['format'])}</dd></dl></section>"
    )


def _timeline(doc: Json) -> str:
    ru = doc["restricted_use"]
    first, after = period_dates(doc)
    start = date.fromisoformat(first)
    n_days = (date.fromisoformat(after) - start).days
    colours = _colours(doc)
    by_app: dict[str, list[tuple[int, int, int, str]]] = {}
    for d in ru["days"]:
        index = (date.fromisoformat(d["date"]) - start).days
        for a in d["apps"]:
            title = (
                f"{d['date']}: {a['app']} sent {a['calls']:,} calls, {a['records']:,} "
                f"records to {d['recipient']}"
            )
            by_app.setdefault(a["app"], []).append((index, a["calls"], a["records"], title))
    alerted: dict[str, list[int]] = {}
    for a in ru["alerts"]:
        alerted.setdefault(a["app"], []).append((date.fromisoformat(a["date"]) - start).days)
    lanes = [
        Lane(app, colours.get(app, PALETTE[0]), by_app[app], alerted.get(app, ()))
        for app in apps_order(doc)
        if app in by_app
    ]
    ticks, d = [], start.replace(day=1)
    while d < date.fromisoformat(after):
        if d >= start:
            ticks.append(((d - start).days, MONTHS[d.month - 1]))
        d = (d + timedelta(days=32)).replace(day=1)
    notice = None
    if ru["government_notice"]:
        nd = date.fromisoformat(ru["government_notice"][:10])
        if start <= nd < date.fromisoformat(after):
            notice = ((nd - start).days, f"notice {nd.isoformat()}")
    return timeline(lanes, n_days, ticks, notice)


def restricted(doc: Json) -> str:
    ru = doc["restricted_use"]
    if not ru["rules"]:
        return "<section><h2>Restricted use</h2><p>The policy has no such rules.</p></section>"
    rules = "; ".join(
        f"<b>{escape(r['recipient'])}</b> requires a {escape(r['requires'])} on record"
        for r in ru["rules"]
    )
    notice = ru["government_notice"]
    state = (
        f'<span class="ok">notice on record from {escape(notice)}</span>'
        if notice
        else '<span class="warn">no notice on record</span>'
    )
    totals = ", ".join(
        f"{escape(t['recipient'])}: {n(t['calls'])} calls, {n(t['records'])} records"
        for t in ru["totals"]
    )
    months = [m for m in ru["by_month"] if m["calls"] or m["records"]]
    month_table = (
        _table(
            ["recipient", "month", "calls", "records", "apps"],
            [
                [
                    escape(m["recipient"]),
                    m["month"],
                    m["calls"],
                    m["records"],
                    escape(", ".join(f"{a['app']} ({a['calls']:,})" for a in m["apps"])),
                ]
                for m in months
            ],
            [False, False, True, True, False],
        )
        if months
        else ""
    )
    days = _table(
        ["date", "recipient", "calls", "records", "apps (calls, records)"],
        [
            [
                d["date"],
                escape(d["recipient"]),
                d["calls"],
                d["records"],
                escape(
                    ", ".join(f"{a['app']} ({a['calls']:,}, {a['records']:,})" for a in d["apps"])
                ),
            ]
            for d in ru["days"]
        ],
        [False, False, True, True, False],
    )
    return (
        f"<section><h2>Restricted use</h2><p>{rules}. {state}. In the period: {totals}; "
        f"{len(ru['alerts']):,} restricted-use alerts.</p>"
        '<p class="sub">Each mark is a day with use, per app (taller: more calls); a red '
        "triangle marks a day an alert was raised (UTC days).</p>"
        f"{_timeline(doc)}{month_table}<details><summary>All {len(ru['days']):,} days with "
        f"restricted use</summary>{days}</details></section>"
    )

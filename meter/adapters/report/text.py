"""A statement as aligned plain text for a terminal (`--format table`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["render_table"]

Json = dict[str, Any]


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _pct(part: int, whole: int) -> str:
    return "-" if whole == 0 else f"{100 * part / whole:.1f}%"


def _grid(head: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> list[str]:
    """Columns aligned; numbers to the right, text to the left."""
    cells = [[_n(c) for c in row] for row in rows]
    numeric = [
        all(isinstance(r[i], int) or str(r[i]).endswith("%") or r[i] == "-" for r in rows)
        for i in range(len(head))
    ]
    widths = [max([len(head[i])] + [len(r[i]) for r in cells]) for i in range(len(head))]

    def line(row: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        return (indent + "  ".join(parts)).rstrip()

    return [line(head), *(line(r) for r in cells)]


def _header(doc: Json, sid: str) -> Iterator[str]:
    org, period = doc["org"], doc["period"]
    cm = period["contract_month"]
    yield f"USAGE STATEMENT  {org['name']} ({org['id']})"
    yield f"  period      {period['from']} to {period['to']} (end excluded), days in {period['tz']}"
    cap = f"; cap {cm['cap']}" if cm["cap"] else ""
    yield f"  months      contract months from day {cm['reset_day']}, {cm['timezone']}{cap}"
    if doc["status"] == "final":
        yield "  status      FINAL: no window of the period can change any more"
    else:
        yield (
            f"  status      PROVISIONAL: windows can still change until event time reaches "
            f"{doc['final_after']}"
        )
    yield f"  as of       {doc['as_of'] or '(nothing stored yet)'} (what the store had received)"
    yield f"  supersedes  {doc['supersedes'] or '-'}"
    yield f"  statement   sha256 {sid}"
    yield f"  policy      sha256 {doc['policy']['sha256']}"
    yield f"  generator   {doc['generator']['name']} {doc['generator']['version']}"


def _apps_and_months(doc: Json) -> Iterator[str]:
    totals = doc["totals"]
    yield "TOTALS"
    yield from _grid(["calls", "records"], [[totals["calls"], totals["records"]]])
    yield ""
    yield "BY APP"
    names = {
        a["id"]: a["name"] + ("" if a["known"] else " (not in the policy)") for a in doc["apps"]
    }
    rows = [
        [
            r["app"],
            names.get(r["app"], r["app"]),
            r["calls"],
            r["records"],
            _pct(r["records"], totals["records"]),
        ]
        for r in doc["by_app"]
    ]
    yield from _grid(["app", "name", "calls", "records", "records %"], rows)
    yield ""
    yield "BY CONTRACT MONTH"
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
        label = m["month"] + (" (part)" if m["partial"] else "")
        rows.append([label, m["calls"], m["records"], *used])
    yield from _grid(["month", "calls", "records", *caps], rows)
    for metric in ("records", "calls"):
        yield ""
        yield f"BY APP AND MONTH: {metric}"
        months = [m["month"] for m in doc["by_month"]]
        apps = [a["id"] for a in doc["apps"]]
        cell = {(r["app"], r["month"]): r[metric] for r in doc["by_app_month"]}
        rows = [[a, *(cell.get((a, m), 0) for m in months)] for a in apps]
        yield from _grid(["app", *(m[2:] for m in months)], rows)


def _endpoints_and_caps(doc: Json) -> Iterator[str]:
    ep = doc["by_endpoint"]
    yield f"TOP {ep['top']} ENDPOINTS (by calls; the rest in (other))"
    yield from _grid(
        ["endpoint", "calls", "records"],
        [[r["endpoint"], r["calls"], r["records"]] for r in ep["rows"]],
    )
    yield ""
    crossed = doc["caps_crossed"]
    yield f"CAP CROSSINGS ({len(crossed)})"
    rows = [
        [
            c["crossed_at"],
            f"{c['subject_type']} {c['subject']}",
            c["cap"],
            c["threshold"],
            c["severity"],
            f"{c['window']['size']} from {c['window']['start']}",
            f"{c['used']:,} of {c['limit']:,}",
            "late" if c["late"] else "",
        ]
        for c in crossed
    ]
    if rows:
        yield from _grid(
            ["crossed at", "subject", "cap", "at", "severity", "window", "used", ""], rows
        )
    else:
        yield "  none"


def _restricted(doc: Json) -> Iterator[str]:
    ru = doc["restricted_use"]
    yield "RESTRICTED USE"
    if not ru["rules"]:
        yield "  no restricted-use rules in the policy"
        return
    for rule in ru["rules"]:
        yield (
            f"  recipient {rule['recipient']}: requires a {rule['requires']} on record "
            f"({rule['severity']} alert otherwise)"
        )
    yield f"  government notice on record: {ru['government_notice'] or 'none'}"
    for t in ru["totals"]:
        yield f"  {t['recipient']}: {t['calls']:,} calls, {t['records']:,} records"
    used = [m for m in ru["by_month"] if m["calls"] or m["records"]]
    if used:
        yield ""
        yield from _grid(
            ["recipient", "month", "calls", "records", "apps"],
            [
                [
                    m["recipient"],
                    m["month"],
                    m["calls"],
                    m["records"],
                    ", ".join(a["app"] for a in m["apps"]),
                ]
                for m in used
            ],
        )
    yield ""
    yield f"  days with restricted use ({len(ru['days'])}):"
    rows = [
        [
            d["date"],
            d["recipient"],
            d["calls"],
            d["records"],
            ", ".join(f"{a['app']} {a['calls']}" for a in d["apps"]),
        ]
        for d in ru["days"]
    ]
    if rows:
        yield from _grid(["date", "recipient", "calls", "records", "apps (calls)"], rows)
    yield f"  restricted-use alerts: {len(ru['alerts'])}"


def _quality(doc: Json) -> Iterator[str]:
    q, inputs = doc["data_quality"], doc["inputs"]
    yield "DATA QUALITY"
    unattributed = q["unattributed"]
    rows = [
        ["totals summed from", f"{q['windows']:,} windows of {q['source_window'] or '-'}"],
        ["late events (counted after their window closed)", f"{q['late_events']:,}"],
        ["windows amended by late events", f"{q['amended_windows']:,}"],
        ["windows with an expired-delta breakdown", f"{q['expired_windows']:,}"],
        ["windows that can still change", f"{q['provisional_windows']:,}"],
        ["event time seen by the store", q["event_time_seen"] or "-"],
        ["calls not attributed to an app", f"{unattributed['calls']:,}"],
        ["apps not in the policy", ", ".join(q["unknown_apps"]) or "none"],
    ]
    for label, value in rows:
        yield f"  {label:<50} {value}"
    yield ""
    yield "INPUTS"
    w, a = inputs["windows"], inputs["alerts"]
    yield f"  window records  {w['count']:,} ({', '.join(w['sizes']) or '-'}) sha256 {w['sha256']}"
    yield f"  alerts          {a['count']:,} sha256 {a['sha256']}"


def render_table(doc: Json, sid: str) -> str:
    lines = list(_header(doc, sid))
    for part in (_apps_and_months, _endpoints_and_caps, _restricted, _quality):
        lines += ["", *part(doc)]
    return "\n".join(lines) + "\n"

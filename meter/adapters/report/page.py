"""A statement as one self-contained HTML file (`--format html`): inline CSS and SVG charts, no
scripts and nothing fetched, rendered from the statement alone, so its bytes are reproducible."""

from __future__ import annotations

from datetime import date, timedelta
from html import escape
from typing import Any

from meter.adapters.report.naming import period_dates
from meter.adapters.report.sections import (
    apps_order,
    by_app,
    caps,
    legend,
    month_label,
    n,
    pivot,
    quality,
    restricted,
    verify,
)
from meter.adapters.report.svg import Bar, endpoint_bars, month_bars

__all__ = ["render_html"]

Json = dict[str, Any]
CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f6f8;color:#2d3436;font:14px/1.45 -apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:1040px;margin:0 auto;padding:28px 24px 48px}
header{background:#fff;border-radius:10px;padding:22px 26px;box-shadow:0 1px 3px #0001}
.eyebrow{text-transform:uppercase;letter-spacing:.08em;font-size:12px;color:#636e72}
h1{margin:4px 0 6px;font-size:28px}
h1 small{font-size:15px;color:#636e72;font-weight:normal;margin-left:8px}
h2{font-size:18px;margin:0 0 4px}
.sub{color:#636e72;margin:0 0 12px}
.badge{display:inline-block;border-radius:999px;padding:3px 12px;font-weight:bold;font-size:12px;
letter-spacing:.06em;text-transform:uppercase;margin-right:8px}
.final{background:#d4f5e2;color:#1e7d4a}.provisional{background:#ffeaa7;color:#8a6100}
.status{margin:10px 0 0}
section{background:#fff;border-radius:10px;padding:20px 26px;margin-top:18px;
box-shadow:0 1px 3px #0001}
.cards{display:grid;grid-template-columns:repeat(5,1fr);gap:12px;background:none;box-shadow:none;
padding:0}
.card{background:#fff;border-radius:10px;padding:14px 16px;box-shadow:0 1px 3px #0001}
.card b{display:block;font-size:24px}.card span{color:#636e72;font-size:12px}
.card.alert b{color:#c0392b}
svg{display:block;width:100%;height:auto;margin:8px 0}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;font-size:12px;margin:6px 0}
.legend i{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;
vertical-align:-1px}
.legend .cap{border-top:2px dashed #c0392b;height:0;width:18px;border-radius:0}
.legend .used{border-top:3px solid #2d3436;height:0;width:18px;border-radius:0}
table{border-collapse:collapse;width:100%;font-size:13px;margin:8px 0}
th,td{padding:5px 8px;border-bottom:1px solid #eef1f3;text-align:left;vertical-align:top}
th,td.n,td code,.nw{white-space:nowrap}
table.pivot{font-size:11px}table.pivot th,table.pivot td{padding:4px 3px}
table.pivot code{font-size:11px}
th{color:#636e72;font-weight:600;font-size:12px}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:bold;border-top:2px solid #dfe6e9}
.share{display:inline-block;height:8px;background:#4e79a7;border-radius:2px;vertical-align:0}
.scroll{overflow-x:auto}
details{margin-top:8px}summary{cursor:pointer;color:#0a66c2}
.warn{color:#c0392b;font-weight:bold}.ok{color:#1e7d4a;font-weight:bold}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:8px 0}
dt{color:#636e72}dd{margin:0}
code,.mono{font-family:"SFMono-Regular",Menlo,Consolas,monospace;font-size:12.5px}
pre{background:#2d3436;color:#f5f6fa;border-radius:8px;padding:12px 14px;overflow-x:auto;
font-size:12.5px}
.digest{word-break:break-all;background:#f4f6f8;border-radius:6px;padding:8px 10px;display:block}
footer{color:#636e72;font-size:12px;margin-top:18px;text-align:center}
@media print{body{background:#fff}section,header,.card{box-shadow:none;border:1px solid #ddd}}
"""


def _header(doc: Json, sid: str) -> str:
    org, period = doc["org"], doc["period"]
    first, after = period_dates(doc)
    last = (date.fromisoformat(after) - timedelta(days=1)).isoformat()
    cm = period["contract_month"]
    final = doc["status"] == "final"
    status = (
        '<span class="badge final">Final</span>no window of the period can change any more'
        if final
        else '<span class="badge provisional">Provisional</span>windows of the period can '
        f"still change until event time reaches {escape(doc['final_after'])}"
    )
    supersedes = (
        f'<p class="status">Supersedes statement <code>{escape(doc["supersedes"])}</code></p>'
        if doc["supersedes"]
        else ""
    )
    return (
        f'<header><div class="eyebrow">Usage statement</div>'
        f"<h1>{escape(org['name'])}<small>{escape(org['id'])}</small></h1>"
        f'<p class="sub">{first} to {last} (days in {escape(period["tz"])}) · contract months '
        f"from day {cm['reset_day']}, {escape(cm['timezone'])} · as of "
        f"{escape(doc['as_of'] or 'nothing stored')} (what the usage store had received)</p>"
        f'<p class="status">{status}</p>{supersedes}'
        f'<p class="status mono">statement sha256 {sid}</p></header>'
    )


def _cards(doc: Json) -> str:
    ru = doc["restricted_use"]
    days = len(ru["days"])
    unnoticed = bool(ru["alerts"])
    cards = [
        (n(doc["totals"]["calls"]), "calls", False),
        (n(doc["totals"]["records"]), "records retrieved", False),
        (str(sum(1 for a in doc["by_app"] if a["calls"])), "apps that called", False),
        (n(len(doc["caps_crossed"])), "cap thresholds crossed", bool(doc["caps_crossed"])),
        (n(days), "days with restricted use", unnoticed),
    ]
    html = "".join(
        f'<div class="card{" alert" if warn else ""}"><b>{v}</b><span>{label}</span></div>'
        for v, label, warn in cards
    )
    return f'<section class="cards">{html}</section>'


def _month_chart(doc: Json, metric: str) -> str:
    apps = apps_order(doc)
    cell = {(r["app"], r["month"]): r[metric] for r in doc["by_app_month"]}
    caps = [c for m in doc["by_month"] for c in m["caps"] if c["metric"] == metric]
    cap_name = caps[0]["cap"] if caps else None
    bars = []
    for i, m in enumerate(doc["by_month"]):
        cap = next((c for c in m["caps"] if c["cap"] == cap_name), None)
        bars.append(
            Bar(
                month_label(m["month"], i == 0),
                [cell.get((a, m["month"]), 0) for a in apps],
                None if cap is None else cap["limit"],
                None if cap is None else cap["used"],
                m["partial"],
            )
        )
    extra = ""
    if cap_name:
        extra = (
            f'<span><i class="cap"></i>the cap\'s limit ({escape(cap_name)})</span>'
            '<span><i class="used"></i>what the cap counted</span>'
        )
    partial = any(m["partial"] for m in doc["by_month"])
    note = '<p class="sub">* part of the month lies outside the period</p>' if partial else ""
    svg = month_bars(bars, apps, metric, cap_name)
    return (
        f"<section><h2>{metric.capitalize()} per contract month, by app</h2>"
        f"{legend(doc, extra)}{svg}{note}</section>"
    )


def _endpoints(doc: Json) -> str:
    ep = doc["by_endpoint"]
    rows = [(r["endpoint"], r["calls"], r["records"]) for r in ep["rows"]]
    return (
        '<section><h2>Top endpoints</h2><p class="sub">Calls and records per endpoint across the '
        f"organisation, most calls first: the top {ep['top']}, then the rest as (other).</p>"
        f"{endpoint_bars(rows)}</section>"
    )


def render_html(doc: Json, sid: str) -> str:
    org = doc["org"]
    first, after = period_dates(doc)
    parts = [
        _header(doc, sid),
        _cards(doc),
        _month_chart(doc, "records"),
        _month_chart(doc, "calls"),
        by_app(doc),
        _endpoints(doc),
        restricted(doc),
        caps(doc),
        pivot(doc),
        quality(doc),
        verify(doc, sid),
    ]
    footer = (
        f"<footer>{escape(doc['generator']['name'])} {escape(doc['generator']['version'])}"
        f" · statement {sid[:16]}…</footer>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Usage statement · {escape(org['name'])} · {first} to {after}</title>"
        f"<style>{CSS}</style></head><body><main>"
        + "".join(parts)
        + footer
        + "</main></body></html>\n"
    )

"""Charts for the HTML statement, drawn as SVG text directly: the same statement always gives
the same bytes (no chart library, no ids, no dates, numbers printed with fixed precision)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = [
    "PALETTE",
    "Bar",
    "Lane",
    "compact",
    "endpoint_bars",
    "month_bars",
    "nice_ticks",
    "timeline",
]

PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
"""Tableau 10: distinct, and readable for most colour-blind people."""
CAP = "#c0392b"
INK = "#2d3436"
GRID = "#dfe6e9"
MUTED = "#636e72"
WIDTH = 960


def _f(x: float) -> str:
    """A coordinate: one decimal, no trailing zeros, never '-0'."""
    text = f"{x:.1f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def compact(n: int) -> str:
    """1234 -> '1.2k', 400000 -> '400k', 2500000 -> '2.5M'."""
    for div, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if abs(n) >= div:
            text = f"{n / div:.1f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    return str(n)


def nice_ticks(top: int, count: int = 5) -> list[int]:
    """Round tick values from 0 to at least `top` (steps of 1, 2 or 5 times a power of ten)."""
    if top <= 0:
        return [0, 1]
    raw = max(1, -(-top // count))
    power = 1
    while power * 10 <= raw:
        power *= 10
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    last = -(-top // step) * step
    return list(range(0, last + 1, step))


def _text(
    x: float,
    y: float,
    text: str,
    *,
    anchor: str = "start",
    size: int = 12,
    fill: str = INK,
    weight: str = "normal",
    halo: bool = False,
) -> str:
    """Text; `halo`: outlined in white, readable over bars."""
    bold = ' font-weight="bold"' if weight != "normal" else ""
    outline = ' stroke="#fff" stroke-width="4" paint-order="stroke"' if halo else ""
    return (
        f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" font-size="{size}" '
        f'fill="{fill}"{bold}{outline}>{escape(text)}</text>'
    )


def _rect(x: float, y: float, w: float, h: float, fill: str, title: str, extra: str = "") -> str:
    return (
        f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(w)}" height="{_f(h)}" fill="{fill}"'
        f"{extra}><title>{escape(title)}</title></rect>"
    )


def _svg(height: float, body: list[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {_f(height)}" '
        f'role="img" aria-label="{escape(label)}" font-family="inherit">' + "".join(body) + "</svg>"
    )


@dataclass(frozen=True)
class Bar:
    """One month: its label, each app's value (in legend order), and the monthly cap's limit and
    counted use (None: no cap on this metric)."""

    label: str
    values: Sequence[int]
    limit: int | None = None
    cap_used: int | None = None
    partial: bool = False


def month_bars(bars: Sequence[Bar], apps: Sequence[str], metric: str, cap: str | None) -> str:
    """Stacked bars per month (one colour per app) against the monthly cap's limit (dashed
    line) and what the cap counted (a dark tick: a cap can count only some calls)."""
    left, right, top, bottom, height = 64, 16, 24, 44, 300
    plot_w, plot_h = WIDTH - left - right, height - top - bottom
    peak = max(
        [sum(b.values) for b in bars]
        + [b.limit or 0 for b in bars]
        + [b.cap_used or 0 for b in bars]
        + [1]
    )
    ticks = nice_ticks(peak)
    scale = plot_h / ticks[-1]
    body: list[str] = []
    for t in ticks:
        y = top + plot_h - t * scale
        body.append(
            f'<line x1="{left}" x2="{WIDTH - right}" y1="{_f(y)}" y2="{_f(y)}" stroke="{GRID}"/>'
        )
        body.append(_text(left - 8, y + 4, compact(t), anchor="end", size=11, fill=MUTED))
    band = plot_w / max(1, len(bars))
    width = min(56.0, band * 0.68)
    for i, bar in enumerate(bars):
        x = left + i * band + (band - width) / 2
        y = top + plot_h
        for app, value, colour in zip(apps, bar.values, _colours(len(apps)), strict=True):
            if value <= 0:
                continue
            h = value * scale
            y -= h
            body.append(_rect(x, y, width, h, colour, f"{app}, {bar.label}: {value:,} {metric}"))
        total = sum(bar.values)
        over = bar.limit is not None and bar.cap_used is not None and bar.cap_used >= bar.limit
        if bar.cap_used is not None and bar.limit:
            cy = top + plot_h - bar.cap_used * scale
            pct = 100 * bar.cap_used / bar.limit
            body.append(
                f'<line x1="{_f(x - 4)}" x2="{_f(x + width + 4)}" y1="{_f(cy)}" y2="{_f(cy)}" '
                f'stroke="{INK}" stroke-width="2.5"><title>{escape(bar.label)}: {cap} counted '
                f"{bar.cap_used:,} of {bar.limit:,} ({pct:.1f}%)</title></line>"
            )
        label_y = top + plot_h - total * scale - 6
        body.append(
            _text(
                x + width / 2,
                label_y,
                compact(total),
                anchor="middle",
                size=10,
                fill=CAP if over else MUTED,
                weight="bold" if over else "normal",
            )
        )
        name = bar.label + ("*" if bar.partial else "")
        body.append(
            _text(
                x + width / 2,
                top + plot_h + 16,
                name,
                anchor="middle",
                size=11,
                fill=CAP if over else INK,
                weight="bold" if over else "normal",
            )
        )
        if over:
            body.append(
                _text(
                    x + width / 2, top + plot_h + 30, "over cap", anchor="middle", size=10, fill=CAP
                )
            )
    limits = {b.limit for b in bars if b.limit is not None}
    if len(limits) == 1:
        (limit,) = limits
        y = top + plot_h - limit * scale
        body.append(
            f'<line x1="{left}" x2="{WIDTH - right}" y1="{_f(y)}" y2="{_f(y)}" '
            f'stroke="{CAP}" stroke-width="2" stroke-dasharray="7 5"/>'
        )
        body.append(
            _text(
                WIDTH - right,
                y - 6,
                f"cap {cap}: {limit:,} a month",
                anchor="end",
                size=11,
                fill=CAP,
                weight="bold",
                halo=True,
            )
        )
    return _svg(height, body, f"{metric} per contract month and app, against the cap")


def _colours(n: int) -> list[str]:
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


def endpoint_bars(rows: Sequence[tuple[str, int, int]]) -> str:
    """Horizontal bars of calls per endpoint, largest first; records as a note."""
    label_w, right, row_h, top = 300, 150, 26, 8
    height = top + row_h * max(1, len(rows)) + 8
    peak = max([calls for _, calls, _ in rows] + [1])
    span = WIDTH - label_w - right
    body: list[str] = []
    for i, (name, calls, records) in enumerate(rows):
        y = top + i * row_h
        shown = name if len(name) <= 44 else name[:43] + "…"
        colour = "#b2bec3" if name == "(other)" else PALETTE[0]
        body.append(_text(label_w - 10, y + 16, shown, anchor="end", size=12))
        w = max(1.0, calls / peak * span)
        body.append(
            _rect(
                label_w,
                y + 4,
                w,
                row_h - 8,
                colour,
                f"{name}: {calls:,} calls, {records:,} records",
            )
        )
        body.append(
            _text(
                label_w + w + 8,
                y + 16,
                f"{calls:,} calls · {compact(records)} rec.",
                size=11,
                fill=MUTED,
            )
        )
    return _svg(height, body, "calls per endpoint")


@dataclass(frozen=True)
class Lane:
    """One app's restricted-use days: (day index, calls, records, title) and alerted days."""

    app: str
    colour: str
    days: Sequence[tuple[int, int, int, str]]
    alerted: Sequence[int] = ()


def timeline(
    lanes: Sequence[Lane],
    n_days: int,
    months: Sequence[tuple[int, str]],
    notice: tuple[int, str] | None,
) -> str:
    """One lane per app over the period's days: a mark on each day with restricted use (taller
    with more calls), a red triangle on the days an alert was raised; the government notice, if
    any, as a green line. `months`: (day index, label) of the month ticks."""
    left, right, top, lane_h = 170, 16, 28, 26
    height = top + lane_h * max(1, len(lanes)) + 26
    span = WIDTH - left - right
    day_w = span / max(1, n_days)
    body: list[str] = []
    bottom = top + lane_h * max(1, len(lanes))
    for index, label in months:
        x = left + index * day_w
        body.append(
            f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{top - 6}" y2="{bottom}" stroke="{GRID}"/>'
        )
        body.append(_text(x + 3, top - 10, label, size=11, fill=MUTED))
    peak = max([c for lane in lanes for _, c, _, _ in lane.days] + [1])
    for i, lane in enumerate(lanes):
        y = top + i * lane_h
        body.append(_text(left - 10, y + lane_h / 2 + 4, lane.app, anchor="end", size=12))
        body.append(
            f'<line x1="{left}" x2="{WIDTH - right}" y1="{_f(y + lane_h - 3)}" '
            f'y2="{_f(y + lane_h - 3)}" stroke="{GRID}"/>'
        )
        for day, calls, _records, title in lane.days:
            h = 6 + 12 * calls / peak
            body.append(
                _rect(
                    left + day * day_w, y + lane_h - 3 - h, max(2.5, day_w), h, lane.colour, title
                )
            )
        for day in lane.alerted:
            cx = left + day * day_w + max(2.5, day_w) / 2
            ty = y + 2
            body.append(
                f'<path d="M{_f(cx - 4)} {_f(ty)}h8l-4 6z" fill="{CAP}"><title>alert '
                f"raised on this day</title></path>"
            )
    if not lanes:
        body.append(_text(left, top + 17, "no restricted use in the period", fill=MUTED))
    if notice is not None:
        index, label = notice
        x = left + index * day_w
        body.append(
            f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{top - 6}" y2="{bottom}" '
            f'stroke="#27ae60" stroke-width="2"/>'
        )
        body.append(_text(x + 4, bottom + 16, label, size=11, fill="#27ae60", weight="bold"))
    return _svg(height, body, "days with restricted use, per app")

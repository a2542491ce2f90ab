"""HTTP rate-limit headers for a call's caps (pure): the IETF RateLimit fields, the legacy and
Kong-style headers gateways and clients already read, and vendor headers for records caps.

- `RateLimit-Policy: "tier:std:calls-15m";q=450;w=900, "org:acme:calls-month";q=1000000`
  (draft-ietf-httpapi-ratelimit-headers: one item per calls cap; `w`, the window in seconds, is
  left out for calendar months, whose length varies).
- `RateLimit: "tier:std:calls-15m";r=12;t=301, ...` (remaining and seconds to reset).
- `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` for the tightest calls cap (least
  remaining, then soonest reset), and Kong's `X-RateLimit-Limit-<Window>` /
  `X-RateLimit-Remaining-<Window>` per window (`Second`, `Minute`, `Hour`, `Day`, `Month`, or
  the size name such as `15m`).
- Records caps (records retrieved are not requests): `X-Meter-Records-Limit`,
  `X-Meter-Records-Remaining`, `X-Meter-Records-Reset` for the tightest one.

Only hard caps are advertised: a soft cap never limits, so a client must not slow down for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from meter.core.enforcement import CapNow
from meter.core.windows import FixedWindow

Header = tuple[str, str]

_KONG_NAMES = {1_000: "Second", 60_000: "Minute", 3_600_000: "Hour", 86_400_000: "Day"}


def window_label(cap: CapNow) -> str:
    window = cap.cap.window
    if isinstance(window, FixedWindow):
        return _KONG_NAMES.get(window.size_ms, window.name)
    return "Month"


def _tightest(caps: Sequence[CapNow]) -> CapNow:
    return min(caps, key=lambda c: (c.remaining, c.end_ms, c.cap.key))


def _policy_item(cap: CapNow) -> str:
    item = f'"{cap.cap.key}";q={cap.cap.limit}'
    window = cap.cap.window
    if isinstance(window, FixedWindow):
        item += f";w={window.size_ms // 1000}"
    return item


def headers(caps: Sequence[CapNow], now_ms: int) -> list[Header]:
    """The rate-limit headers of a call drawing from `caps`."""
    hard = [c for c in caps if c.cap.enforcement == "hard"]
    calls = sorted((c for c in hard if c.cap.metric == "calls"), key=lambda c: c.cap.key)
    records = [c for c in hard if c.cap.metric == "records"]
    out: list[Header] = []
    if calls:
        out.append(("RateLimit-Policy", ", ".join(_policy_item(c) for c in calls)))
        out.append((
            "RateLimit",
            ", ".join(f'"{c.cap.key}";r={c.remaining};t={c.reset_in_s(now_ms)}' for c in calls),
        ))  # fmt: skip
        tight = _tightest(calls)
        out += [
            ("RateLimit-Limit", str(tight.cap.limit)),
            ("RateLimit-Remaining", str(tight.remaining)),
            ("RateLimit-Reset", str(tight.reset_in_s(now_ms))),
        ]
        by_label: dict[str, list[CapNow]] = {}
        for c in calls:
            by_label.setdefault(window_label(c), []).append(c)
        for label, group in by_label.items():
            tight = _tightest(group)
            out += [
                (f"X-RateLimit-Limit-{label}", str(tight.cap.limit)),
                (f"X-RateLimit-Remaining-{label}", str(tight.remaining)),
            ]
    if records:
        tight = _tightest(records)
        out += [
            ("X-Meter-Records-Limit", str(tight.cap.limit)),
            ("X-Meter-Records-Remaining", str(tight.remaining)),
            ("X-Meter-Records-Reset", str(tight.reset_in_s(now_ms))),
        ]
    return out

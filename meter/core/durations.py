"""Durations: the one grammar every setting and policy field uses, and the time units.

A duration is a number and a unit (`d`, `h`, `m`, `s`, `ms`), several from the largest unit to
the smallest: `500ms`, `90s`, `15m`, `1h`, `1d`, `2h30m`. Units are lower case. A bare number is
whole seconds: a YAML integer in a policy, digits in a flag or environment variable.
"""

from __future__ import annotations

import re

SECOND_MS = 1_000
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

UNITS_MS: tuple[tuple[str, int], ...] = (
    ("d", DAY_MS),
    ("h", HOUR_MS),
    ("m", MINUTE_MS),
    ("s", SECOND_MS),
    ("ms", 1),
)
"""Largest first: a duration's name uses the largest unit that divides it exactly."""
_UNIT_MS = dict(UNITS_MS)
_UNIT_RANK = {unit: rank for rank, (unit, _) in enumerate(UNITS_MS)}
_DURATION_RE = re.compile(r"(?:[0-9]+(?:ms|d|h|m|s))+")
_PART_RE = re.compile(r"([0-9]+)(ms|d|h|m|s)")
HINT = "a number and a unit (d, h, m, s, ms), e.g. '15m'"


def parse_duration(text: str) -> int:
    """Milliseconds of a duration with units (see the module doc); ValueError otherwise."""
    value = text.strip()
    if not _DURATION_RE.fullmatch(value):
        raise ValueError(f"invalid duration {text!r}: use {HINT}")
    total = 0
    last_rank = -1
    for match in _PART_RE.finditer(value):
        number, unit = match.groups()
        rank = _UNIT_RANK[unit]
        if rank <= last_rank:
            raise ValueError(
                f"invalid duration {text!r}: units must go from largest to smallest, once"
            )
        last_rank = rank
        total += int(number) * _UNIT_MS[unit]
    return total


def parse_setting_duration(text: str) -> int:
    """A duration given as text (a flag, an environment variable): with units, or whole
    seconds."""
    value = text.strip()
    return int(value) * SECOND_MS if value.isdigit() else parse_duration(value)


def format_duration(ms: int) -> str:
    """The shortest name of a duration in the same grammar: 90000 -> "90s", 9000000 -> "2h30m"."""
    if ms == 0:
        return "0s"
    parts = []
    rest = ms
    for unit, unit_ms in UNITS_MS:
        if rest >= unit_ms:
            parts.append(f"{rest // unit_ms}{unit}")
            rest %= unit_ms
    return "".join(parts)

"""File names of a statement's outputs: `<org>-<from date>-<to date>-<first 12 of the id>`."""

from __future__ import annotations

import re
from typing import Any

from meter.core.statement import local_date, parse_bound, zone

__all__ = ["period_dates", "stem"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def period_dates(doc: dict[str, Any]) -> tuple[str, str]:
    """The period's first day and the day after its last, in its zone."""
    period = doc["period"]
    tz = str(period["tz"])
    z = zone(tz)
    start = parse_bound(period["from"], tz, "from")
    end = parse_bound(period["to"], tz, "to")
    return local_date(start, z), local_date(end, z)


def stem(doc: dict[str, Any], sid: str) -> str:
    first, after = period_dates(doc)
    org = _UNSAFE.sub("_", str(doc["org"]["id"]))
    return f"{org}-{first}-{after}-{sid[:12]}"

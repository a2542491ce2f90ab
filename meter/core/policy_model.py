"""The value types of a usage policy: thresholds, caps, tiers, organisations, apps and
restricted-use rules. Import them from `meter.core.policy`, which also loads documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meter.core.windows import WindowSpec

__all__ = [
    "DEFAULT_THRESHOLDS",
    "ENFORCEMENTS",
    "LEVELS",
    "METRICS",
    "REQUIREMENTS",
    "App",
    "Cap",
    "Org",
    "RestrictedUse",
    "Threshold",
    "Tier",
    "format_statuses",
]

LEVELS = ("app", "org")
METRICS = ("calls", "records")
REQUIREMENTS = ("notice",)
ENFORCEMENTS = ("hard", "soft")
"""hard: a gateway denies calls while the cap is exceeded; soft: it only reports and alerts."""


@dataclass(frozen=True, slots=True, order=True)
class Threshold:
    """Alert at `severity` once usage reaches `ratio` of the cap's limit."""

    ratio: float
    severity: str


DEFAULT_THRESHOLDS = (Threshold(0.8, "warning"), Threshold(1.0, "critical"))


@dataclass(frozen=True, slots=True)
class Cap:
    """A limit on one metric per window for one subject level (app or org).

    `key` is globally unique and stable, e.g. ``tier:enterprise:calls-15m``.
    """

    id: str
    key: str
    level: str
    metric: str
    window: WindowSpec
    limit: int
    thresholds: tuple[Threshold, ...] = DEFAULT_THRESHOLDS
    endpoints: frozenset[str] | None = None
    statuses: tuple[tuple[int, int], ...] | None = None
    enforcement: str = "hard"
    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"cap {self.key}: level must be one of {LEVELS}, got {self.level!r}")
        if self.metric not in METRICS:
            raise ValueError(f"cap {self.key}: metric must be one of {METRICS}")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit <= 0:
            raise ValueError(f"cap {self.key}: limit must be a positive int, got {self.limit!r}")
        if not self.thresholds:
            raise ValueError(f"cap {self.key}: needs at least one threshold")
        if self.enforcement not in ENFORCEMENTS:
            raise ValueError(f"cap {self.key}: enforcement must be one of {ENFORCEMENTS}")
        object.__setattr__(self, "thresholds", tuple(sorted(self.thresholds)))
        endpoints = self.endpoints or frozenset()
        # Exact entries are a set lookup; prefixes feed one str.startswith(tuple) call.
        object.__setattr__(self, "_exact", frozenset(e for e in endpoints if not e.endswith("*")))
        object.__setattr__(
            self, "_prefixes", tuple(sorted(e[:-1] for e in endpoints if e.endswith("*")))
        )

    @property
    def filtered(self) -> bool:
        """True when the cap counts only some endpoints or statuses."""
        return self.endpoints is not None or self.statuses is not None

    def matches(self, endpoint: str | None, status: int) -> bool:
        """Whether an event with this endpoint and HTTP status counts towards the cap."""
        if self.statuses is not None:
            for low, high in self.statuses:
                if low <= status <= high:
                    break
            else:
                return False
        return self.matches_endpoint(endpoint)

    def matches_endpoint(self, endpoint: str | None) -> bool:
        """Whether a call to `endpoint` can count towards the cap (before its status is known)."""
        if self.endpoints is None:
            return True
        if endpoint is None:
            return False
        return endpoint in self._exact or endpoint.startswith(self._prefixes)


@dataclass(frozen=True, slots=True)
class RestrictedUse:
    """Use for `recipient` (case-insensitive) needs `requires` ("notice") on record."""

    recipient: str
    requires: str = "notice"
    severity: str = "critical"

    def __post_init__(self) -> None:
        if self.requires not in REQUIREMENTS:
            raise ValueError(f"requires must be one of {REQUIREMENTS}, got {self.requires!r}")


@dataclass(frozen=True, slots=True)
class Tier:
    """A named bundle of app-level caps applied to every app on the tier."""

    id: str
    caps: tuple[Cap, ...] = ()


@dataclass(frozen=True, slots=True)
class Org:
    """A customer or contract; its caps count across all its apps."""

    id: str
    name: str
    government_notice_ms: int | None = None
    caps: tuple[Cap, ...] = ()


@dataclass(frozen=True, slots=True)
class App:
    """An API client of one org; `caps` are its own, added to its tier's caps."""

    id: str
    org_id: str
    tier: str | None
    name: str
    caps: tuple[Cap, ...] = ()


def _format_range(low: int, high: int) -> str:
    if low == high:
        return str(low)
    if low % 100 == 0 and high == low + 99:
        return f"{low // 100}xx"
    return f"{low}-{high}"


def format_statuses(statuses: tuple[tuple[int, int], ...]) -> str:
    """Status ranges back in policy notation, e.g. '2xx, 429, 500-503'."""
    return ", ".join(_format_range(low, high) for low, high in statuses)

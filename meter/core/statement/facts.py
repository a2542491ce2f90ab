"""What a statement is built from: plain values read from the usage store (volumes, window and
alert facts, evidence digests) and from the policy. No I/O: the adapter fills them in."""

from __future__ import annotations

from dataclasses import dataclass

from meter.core.policy_model import RestrictedUse
from meter.core.statement.periods import ContractMonth, MonthSlice

__all__ = ["AlertFact", "CapUse", "Digest", "Rules", "StatementFacts", "Volume", "WindowFact"]


@dataclass(frozen=True, slots=True)
class Volume:
    calls: int = 0
    records: int = 0

    def __add__(self, other: Volume) -> Volume:
        return Volume(self.calls + other.calls, self.records + other.records)

    def __sub__(self, other: Volume) -> Volume:
        return Volume(self.calls - other.calls, self.records - other.records)


@dataclass(frozen=True, slots=True)
class Rules:
    """The workers' horizons (a window can change until event time passes its end plus all
    three) and how many endpoints are listed before the rest are folded."""

    grace_ms: int = 60_000
    late_horizon_ms: int = 86_400_000
    history_horizon_ms: int = 35 * 86_400_000
    top: int = 10

    def forget_due(self, end_ms: int) -> int:
        """Event time after which a window ending at `end_ms` can no longer change."""
        return end_ms + self.grace_ms + self.late_horizon_ms + self.history_horizon_ms


@dataclass(frozen=True, slots=True)
class CapUse:
    """A monthly cap's use in one contract month (the whole month, as the worker counted it)."""

    cap: str
    metric: str
    limit: int
    used: int


@dataclass(frozen=True, slots=True)
class AlertFact:
    id: str
    kind: str
    severity: str
    subject_type: str
    subject: str
    cap: str | None
    metric: str
    threshold: float | None
    window_size: str
    window_start_ms: int
    window_end_ms: int
    limit: int | None
    used: int
    crossed_at_ms: int
    late: bool
    app_id: str | None
    recipient: str | None
    rule: str | None


@dataclass(frozen=True, slots=True)
class WindowFact:
    """One of the organisation's windows the totals were summed from, as of the cut."""

    end_ms: int
    revision: int
    base: str
    late_events: int


@dataclass(frozen=True, slots=True)
class Digest:
    count: int
    sha256: str


@dataclass
class StatementFacts:
    """Everything `build_statement` needs. Keys: apps by id, months by `MonthSlice.label`,
    days as local dates of the report's zone."""

    org_id: str
    org_name: str
    government_notice_ms: int | None
    from_ms: int
    to_ms: int
    tz: str
    contract: ContractMonth
    rules: Rules
    as_of_ms: int | None
    """The ingest cut: the newest store transaction counted (None: the store held nothing)."""
    event_time_seen_ms: int | None
    """The latest window start among the stored windows of any subject, as of the cut."""
    policy_sha256: str
    generator: tuple[str, str]
    known_apps: dict[str, str]
    """The organisation's apps in the policy: id -> name."""
    restricted: tuple[RestrictedUse, ...]
    totals: Volume
    by_app: dict[str, Volume]
    months: list[MonthSlice]
    month_totals: dict[str, Volume]
    app_months: dict[tuple[str, str], Volume]
    month_caps: dict[str, list[CapUse]]
    endpoints: list[tuple[str, Volume]]
    """Top endpoints by calls, then "(other)" for the rest."""
    recipient_months: dict[tuple[str, str, str], Volume]
    """(recipient, month, app) -> volume, for the restricted recipients."""
    recipient_days: dict[tuple[str, str, str], Volume]
    """(date, recipient, app) -> volume, for the restricted recipients."""
    alerts: list[AlertFact]
    windows: list[WindowFact]
    source_window: str | None
    window_inputs: Digest
    window_sizes: tuple[str, ...]
    alert_inputs: Digest
    supersedes: str | None = None

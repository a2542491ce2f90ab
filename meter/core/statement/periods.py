"""The period of a usage statement: its bounds read in a time zone, the contract months (the
policy's reset day and zone) that cut it, clipped to it, and local dates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meter.core.durations import DAY_MS
from meter.core.errors import MeterError
from meter.core.policy import Policy
from meter.core.windows import CalendarMonthWindow

__all__ = [
    "MAX_PERIOD_DAYS",
    "ContractMonth",
    "MonthSlice",
    "StatementError",
    "check_period",
    "contract_month",
    "local_date",
    "month_slices",
    "parse_bound",
    "zone",
]

MAX_PERIOD_DAYS = 3660
"""A statement covers at most ten years..."""
EARLIEST_MS, LATEST_MS = 0, 221_845_392_000_000
"""... from 1970 to 9000 (far from the ends of the calendar, where zones overflow)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


class StatementError(MeterError):
    """A statement's parameter is wrong or cannot be answered; `param` names it (`from`, `to`,
    `tz`, `org_id`, `as_of`, `top`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


def zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise StatementError("tz", f"unknown IANA time zone {tz[:64]!r}") from None


def parse_bound(text: str, tz: str, param: str) -> int:
    """Epoch ms of a date (midnight in `tz`) or an RFC 3339 date-time with an offset."""
    value = text.strip()
    try:
        if len(value) == len("2022-01-01"):
            day = date.fromisoformat(value)
            moment = datetime(day.year, day.month, day.day, tzinfo=zone(tz))
        else:
            moment = datetime.fromisoformat(value)
    except ValueError:
        raise StatementError(
            param, f"a date (2022-01-01) or an RFC 3339 date-time, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        raise StatementError(param, f"needs a UTC offset or Z, got {text!r}")
    return (moment - _EPOCH) // _ONE_MS


def local_date(ms: int, tz: ZoneInfo) -> str:
    return (_EPOCH + timedelta(milliseconds=ms)).astimezone(tz).date().isoformat()


def check_period(from_ms: int, to_ms: int) -> None:
    if not EARLIEST_MS <= from_ms < LATEST_MS:
        raise StatementError("from", "must be from 1970 to 9000")
    if to_ms <= from_ms:
        raise StatementError("to", "must be after from")
    if to_ms - from_ms > MAX_PERIOD_DAYS * DAY_MS:
        raise StatementError("to", f"a statement covers at most {MAX_PERIOD_DAYS} days")


@dataclass(frozen=True, slots=True)
class ContractMonth:
    """How the statement cuts months: `window` (reset day and zone) from the policy's `cap`, or
    calendar months of the report's zone when the organisation has no monthly cap (cap None)."""

    window: CalendarMonthWindow
    cap: str | None


def contract_month(policy: Policy, org_id: str, tz: str) -> ContractMonth:
    """The organisation's first monthly cap's month; else one of its apps' (by app id); else
    calendar months in `tz`."""
    org = policy.orgs.get(org_id)
    caps = list(org.caps) if org is not None else []
    for app in sorted(policy.apps.values(), key=lambda a: a.id):
        if app.org_id == org_id:
            caps += policy.app_caps(app.id)
    for cap in caps:
        if isinstance(cap.window, CalendarMonthWindow):
            return ContractMonth(cap.window, cap.key)
    zone(tz)
    return ContractMonth(CalendarMonthWindow(1, tz), None)


@dataclass(frozen=True, slots=True)
class MonthSlice:
    """One contract month as far as it lies in the period: [start_ms, end_ms) of the month
    [month_start_ms, month_end_ms). `label`: the month's first local day's year and month."""

    label: str
    start_ms: int
    end_ms: int
    month_start_ms: int
    month_end_ms: int

    @property
    def partial(self) -> bool:
        return (self.start_ms, self.end_ms) != (self.month_start_ms, self.month_end_ms)


def month_slices(window: CalendarMonthWindow, from_ms: int, to_ms: int) -> list[MonthSlice]:
    tz = zone(window.timezone)
    out = []
    t = from_ms
    while t < to_ms:
        month = window.bucket(t)
        label = local_date(month.start_ms, tz)[:7]
        out.append(MonthSlice(label, t, min(to_ms, month.end_ms), month.start_ms, month.end_ms))
        t = month.end_ms
    return out

"""Reads for the API, over either backend: usage in time-zone buckets with breakdowns, top-N and
as-of cuts (`usage`), and alerts (`alerts`). Bad input raises `QueryError` (a ValueError) that
names the parameter; pages are ordered stably and continue with an opaque cursor.
"""

# ruff: noqa: S608 - SQL here is built from fixed fragments and computed integers only; every
# value from a query goes in as a parameter.
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from meter.adapters.store.buckets import Plan, QueryError, plan_buckets
from meter.adapters.store.cursors import decode_cursor, encode_cursor
from meter.adapters.store.database import Database, Params, fetchone, placeholders

__all__ = [
    "AlertPage",
    "AlertQuery",
    "AlertRow",
    "QueryError",
    "UsagePage",
    "UsageQuery",
    "UsageRow",
    "alerts",
    "usage",
]

SUBJECT_TYPES = ("app", "org")
GROUPS = ("subject", "endpoint", "recipient")
METRICS = ("calls", "records", "both")
OTHER = "(other)"
MAX_LIMIT = 10_000
MAX_TOP = 1_000
MAX_SUBJECTS = 1_000


@dataclass(frozen=True)
class UsageQuery:
    """Usage of `subject_type` subjects over [from_ms, to_ms) in `window` buckets of zone `tz`
    (None: one bucket for the whole range). `org_id` restricts everything to one organisation;
    `as_of_ms` counts only window records the store had ingested by then."""

    subject_type: str
    from_ms: int
    to_ms: int
    window: str | None = "1h"
    tz: str = "UTC"
    subjects: tuple[str, ...] = ()
    org_id: str | None = None
    group_by: tuple[str, ...] = ("subject",)
    metric: str = "both"
    top: int | None = None
    as_of_ms: int | None = None
    cursor: str | None = None
    limit: int = 1000


@dataclass(frozen=True)
class UsageRow:
    """One bucket of one group. `subject` is None unless grouped by subject; `dimensions` holds
    the endpoint or recipient grouped by. A metric not asked for is None. `final`: every
    window summed is a closed window's record (the store only receives closed windows; a late
    event can still bring a higher revision)."""

    from_ms: int
    to_ms: int
    subject_type: str
    subject: str | None
    org_id: str | None
    dimensions: dict[str, str]
    calls: int | None
    records: int | None
    final: bool


@dataclass(frozen=True)
class UsagePage:
    """Rows in (bucket, rank, subject, org, dimension) order; `next_cursor` continues them.
    `freshness_ms`: when the newest window record considered was ingested (None: none yet).
    `source_window`: the stored window size the buckets were summed from."""

    rows: list[UsageRow]
    next_cursor: str | None
    freshness_ms: int | None
    source_window: str | None
    as_of_ms: int | None = None


@dataclass(frozen=True)
class AlertQuery:
    """Alerts crossed in [from_ms, to_ms) (either bound optional), oldest first unless
    `newest_first`; every filter given must match."""

    subject_type: str | None = None
    subjects: tuple[str, ...] = ()
    org_id: str | None = None
    kinds: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    from_ms: int | None = None
    to_ms: int | None = None
    newest_first: bool = False
    cursor: str | None = None
    limit: int = 100


@dataclass(frozen=True)
class AlertRow:
    id: str
    kind: str
    severity: str
    subject_type: str
    subject: str
    org_id: str | None
    cap: str | None
    metric: str
    window_size: str
    window_start_ms: int
    window_end_ms: int
    limit: int | None
    used: int
    threshold: float | None
    utilization: float | None
    crossed_at_ms: int
    emitted_at_ms: int
    late: bool
    event_id: str
    app_id: str | None
    recipient: str | None
    rule: str | None
    payload: dict[str, Any] = field(repr=False)
    """The alert exactly as published on the topic."""


@dataclass(frozen=True)
class AlertPage:
    alerts: list[AlertRow]
    next_cursor: str | None


# -- usage ---------------------------------------------------------------------------------------
def _check_usage(q: UsageQuery) -> None:
    if q.subject_type not in SUBJECT_TYPES:
        raise QueryError("subject_type", f"must be one of {', '.join(SUBJECT_TYPES)}")
    unknown = [g for g in q.group_by if g not in GROUPS]
    if unknown or len(set(q.group_by)) != len(q.group_by):
        raise QueryError("group_by", f"a subset of {', '.join(GROUPS)}, each once")
    if {"endpoint", "recipient"} <= set(q.group_by):
        raise QueryError("group_by", "endpoints and recipients are separate breakdowns: "
                         "group by one of them")  # fmt: skip
    if q.metric not in METRICS:
        raise QueryError("metric", f"must be one of {', '.join(METRICS)}")
    if q.top is not None and not 1 <= q.top <= MAX_TOP:
        raise QueryError("top", f"must be between 1 and {MAX_TOP}")
    if not 1 <= q.limit <= MAX_LIMIT:
        raise QueryError("limit", f"must be between 1 and {MAX_LIMIT}")
    if len(q.subjects) > MAX_SUBJECTS or any(not s for s in q.subjects):
        raise QueryError("subjects", f"at most {MAX_SUBJECTS} non-empty ids")


def _source(q: UsageQuery, plan: Plan, dim: str | None) -> tuple[list[str], str, list[Any]]:
    """CTEs and a SELECT of (subject, org_id, window_start, name, calls, records, revision) over
    the windows the buckets sum: current totals, or rebuilt from the evidence as of a time."""
    where = ["subject_type = ?", "window_size = ?", "window_start >= ?", "window_start < ?"]
    params: list[Any] = [q.subject_type, plan.source, q.from_ms, q.to_ms]
    if q.subjects:
        where.append(f"subject IN ({placeholders(len(q.subjects))})")
        params += q.subjects
    cond = " AND ".join(f"w.{c}" for c in where)
    if q.as_of_ms is None:
        org = " AND w.org_id = ?" if q.org_id is not None else ""
        params += [q.org_id] if q.org_id is not None else []
        if dim is None:
            sql = (
                "SELECT w.subject AS subject, w.org_id AS org_id, w.window_start AS window_start, "
                "'' AS name, w.calls AS calls, w.records AS records, w.revision AS revision "
                f"FROM usage_window w WHERE {cond}{org}"
            )
            return [], sql, params
        sql = (
            "SELECT w.subject AS subject, w.org_id AS org_id, w.window_start AS window_start, "
            f"c.{dim} AS name, c.calls AS calls, c.records AS records, w.revision AS revision "
            f"FROM usage_window w JOIN usage_window_{dim} c ON c.subject_type = w.subject_type "
            "AND c.subject = w.subject AND c.window_size = w.window_size "
            # `+`: SQLite would otherwise carry the range on w over to c and scan it per window.
            f"AND c.window_start = +w.window_start WHERE {cond}{org}"
        )
        return [], sql, params
    rank = (
        "ROW_NUMBER() OVER (PARTITION BY w.subject, w.window_start ORDER BY w.revision DESC, w.seq)"
    )
    filters = f"{cond} AND w.ingested_at <= ?"
    ctes = [
        f"ranked AS (SELECT w.record_id, w.subject, w.org_id, w.window_start, w.calls, "
        f"w.records, w.revision, w.base, {rank} AS rn FROM window_revision w WHERE {filters})",
        "latest AS (SELECT * FROM ranked WHERE rn = 1"
        + (" AND org_id = ?)" if q.org_id is not None else ")"),
    ]
    cte_params = [*params, q.as_of_ms] + ([q.org_id] if q.org_id is not None else [])
    cols = "l.subject AS subject, l.org_id AS org_id, l.window_start AS window_start"
    if dim is None:
        sql = f"SELECT {cols}, '' AS name, l.calls AS calls, l.records AS records, " \
              "l.revision AS revision FROM latest l"  # fmt: skip
        return ctes, sql, cte_params
    # An expired window's breakdown adds the last complete record's (by index, per window).
    last_complete = (
        "(SELECT k.record_id FROM window_revision k WHERE k.subject_type = ? "
        "AND k.window_size = ? AND k.window_start = l.window_start AND k.subject = l.subject "
        "AND k.base = 'complete' AND k.ingested_at <= ? ORDER BY k.revision DESC, k.seq LIMIT 1)"
    )
    cell = f"SELECT {cols}, c.name AS name, c.calls AS calls, c.records AS records, " \
           "l.revision AS revision FROM latest l"  # fmt: skip
    sql = (
        f"{cell} JOIN window_revision_cell c ON c.record_id = l.record_id AND c.dimension = ? "
        f"UNION ALL {cell} JOIN window_revision_cell c ON c.record_id = {last_complete} "
        "AND c.dimension = ? WHERE l.base = 'expired'"
    )
    cte_params += [dim, q.subject_type, plan.source, q.as_of_ms, dim]
    return ctes, sql, cte_params


def _sizes(db: Database, as_of_ms: int | None) -> dict[str, int]:
    sql = "SELECT window_size, size_ms FROM stored_window_size WHERE size_ms IS NOT NULL"
    params: Params = ()
    if as_of_ms is not None:
        sql += " AND first_ingested_at <= ?"
        params = (as_of_ms,)
    return {str(n): int(s) for n, s in db.fetchall(sql, params)}


def _freshness(db: Database, as_of_ms: int | None) -> int | None:
    if as_of_ms is None:
        row = fetchone(db, "SELECT MAX(ingested_at) FROM window_revision")
    else:
        row = fetchone(
            db, "SELECT MAX(ingested_at) FROM window_revision WHERE ingested_at <= ?", (as_of_ms,)
        )
    return int(row[0]) if row and row[0] is not None else None


def usage(db: Database, q: UsageQuery) -> UsagePage:
    """Usage buckets: see `UsageQuery` and `UsageRow`. Raises `QueryError` naming the parameter
    when the query is invalid or cannot be answered exactly from the stored windows."""
    _check_usage(q)
    with db.transaction(write=False):
        plan = plan_buckets(q.window, q.tz, q.from_ms, q.to_ms, _sizes(db, q.as_of_ms))
        freshness = _freshness(db, q.as_of_ms)
        if plan is None:
            decode_cursor(q)
            return UsagePage([], None, freshness, None, q.as_of_ms)
        dims = [g for g in q.group_by if g != "subject"]
        dim = dims[0] if dims else None
        ctes, src, params = _source(q, plan, dim)
        by_subject = "subject" in q.group_by
        keyed = (
            f"keyed AS (SELECT {plan.bucket_sql('s.window_start')} AS b, "
            + ("s.subject" if by_subject else "''") + " AS ks, "
            + ("COALESCE(s.org_id, '')" if by_subject else "''") + " AS ko, "
            + ("s.name" if dim else "''") + " AS kn, "
            "s.calls AS calls, s.records AS records, s.revision AS revision "
            f"FROM ({src}) s)"
        )  # fmt: skip
        head = "WITH " + ", ".join([*ctes, keyed])
        top = _top(db, q, head, params)
        extra = hashlib.sha256(json.dumps(top).encode()).hexdigest()[:16] if top else ""
        after = decode_cursor(q, extra)
        rows = _grouped(db, q, head, params, top, after, by_subject, dim)
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    out = []
    for b, _rk, ks, ko, kn, calls, records, low in rows:
        out.append(UsageRow(
            from_ms=int(b), to_ms=plan.bucket_end(int(b)), subject_type=q.subject_type,
            subject=str(ks) if by_subject else None,
            org_id=q.org_id if q.org_id is not None else (str(ko) or None),
            dimensions={dim: str(kn)} if dim else {},
            calls=int(calls) if q.metric != "records" else None,
            records=int(records) if q.metric != "calls" else None,
            final=int(low) >= 0,
        ))  # fmt: skip
    cursor = encode_cursor(q, [int(x) if i < 2 else str(x) for i, x in enumerate(rows[-1][:5])],
                            extra) if more else None  # fmt: skip
    return UsagePage(out, cursor, freshness, plan.source, q.as_of_ms)


def _top(db: Database, q: UsageQuery, head: str, params: list[Any]) -> list[list[str]]:
    """The `top` groups over the whole range, largest first (ties by key)."""
    if q.top is None:
        return []
    metric = "records" if q.metric == "records" else "calls"
    sql = (
        f"{head} SELECT ks, ko, kn, SUM({metric}) AS total FROM keyed GROUP BY ks, ko, kn "
        "ORDER BY total DESC, ks, ko, kn LIMIT ?"
    )
    return [[str(ks), str(ko), str(kn)] for ks, ko, kn, _ in db.fetchall(sql, [*params, q.top])]


def _grouped(
    db: Database,
    q: UsageQuery,
    head: str,
    params: list[Any],
    top: list[list[str]],
    after: list[Any] | None,
    by_subject: bool,
    dim: str | None,
) -> list[tuple[Any, ...]]:
    rank, rank_params = "0", []
    if q.top is not None:
        arms = " ".join("WHEN ks = ? AND ko = ? AND kn = ? THEN ?" for _ in top)
        rank = f"CASE {arms} ELSE {q.top} END" if top else str(q.top)
        rank_params = [v for i, key in enumerate(top) for v in (*key, i)]
    other = q.top if q.top is not None else -1
    folded = (
        f"folded AS (SELECT b, rk, CASE WHEN rk = {other} THEN "
        + (f"'{OTHER}'" if by_subject else "''") + " ELSE ks END AS ks, "
        f"CASE WHEN rk = {other} THEN '' ELSE ko END AS ko, CASE WHEN rk = {other} THEN "
        + (f"'{OTHER}'" if dim else "''") + " ELSE kn END AS kn, calls, records, revision "
        f"FROM (SELECT keyed.*, {rank} AS rk FROM keyed) r)"
    )  # fmt: skip
    where, after_params = "", []
    if after is not None:
        where = "WHERE (b, rk, ks, ko, kn) > (?, ?, ?, ?, ?) "
        after_params = after
    sql = (
        f"{head}, {folded} SELECT b, rk, ks, ko, kn, SUM(calls), SUM(records), MIN(revision) "
        f"FROM folded {where}GROUP BY b, rk, ks, ko, kn ORDER BY b, rk, ks, ko, kn LIMIT ?"
    )
    return db.fetchall(sql, [*params, *rank_params, *after_params, q.limit + 1])


# -- alerts --------------------------------------------------------------------------------------
_ALERT_COLUMNS = (
    "id, kind, severity, subject_type, subject, org_id, cap, metric, window_size, window_start, "
    "window_end, limit_value, used, threshold, utilization, crossed_at, emitted_at, late, "
    "event_id, app_id, recipient, rule, payload"
)


def alerts(db: Database, q: AlertQuery) -> AlertPage:
    """Alerts matching `q`, by crossing time then id; raises `QueryError` naming a bad
    parameter."""
    if q.subject_type is not None and q.subject_type not in SUBJECT_TYPES:
        raise QueryError("subject_type", f"must be one of {', '.join(SUBJECT_TYPES)}")
    if not 1 <= q.limit <= MAX_LIMIT:
        raise QueryError("limit", f"must be between 1 and {MAX_LIMIT}")
    if q.from_ms is not None and q.to_ms is not None and q.to_ms <= q.from_ms:
        raise QueryError("to", "must be after from")
    where: list[str] = []
    params: list[Any] = []
    for column, values in (("subject", q.subjects), ("kind", q.kinds), ("severity", q.severities)):
        if values:
            where.append(f"{column} IN ({placeholders(len(values))})")
            params += values
    for clause, value in (
        ("subject_type = ?", q.subject_type),
        ("org_id = ?", q.org_id),
        ("crossed_at >= ?", q.from_ms),
        ("crossed_at < ?", q.to_ms),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    after = decode_cursor(q)
    if after is not None:
        where.append("(crossed_at, id) < (?, ?)" if q.newest_first else "(crossed_at, id) > (?, ?)")
        params += after
    order = "DESC" if q.newest_first else "ASC"
    sql = (
        f"SELECT {_ALERT_COLUMNS} FROM alert "
        + (f"WHERE {' AND '.join(where)} " if where else "")
        + f"ORDER BY crossed_at {order}, id {order} LIMIT ?"
    )
    with db.transaction(write=False):
        rows = db.fetchall(sql, [*params, q.limit + 1])
    found = [_alert_row(r) for r in rows[: q.limit]]
    cursor = None
    if len(rows) > q.limit:
        last = found[-1]
        cursor = encode_cursor(q, [last.crossed_at_ms, last.id])
    return AlertPage(found, cursor)


def _alert_row(r: tuple[Any, ...]) -> AlertRow:
    def opt_int(v: Any) -> int | None:
        return None if v is None else int(v)

    def opt_float(v: Any) -> float | None:
        return None if v is None else float(v)

    return AlertRow(
        id=r[0], kind=r[1], severity=r[2], subject_type=r[3], subject=r[4], org_id=r[5],
        cap=r[6], metric=r[7], window_size=r[8], window_start_ms=int(r[9]),
        window_end_ms=int(r[10]), limit=opt_int(r[11]), used=int(r[12]),
        threshold=opt_float(r[13]), utilization=opt_float(r[14]), crossed_at_ms=int(r[15]),
        emitted_at_ms=int(r[16]), late=bool(r[17]), event_id=r[18], app_id=r[19],
        recipient=r[20], rule=r[21], payload=json.loads(r[22]),
    )  # fmt: skip

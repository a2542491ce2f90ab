"""Reads and writes for usage statements: the ingest cut of an as-of time, the event time the
store has seen, an organisation's windows, monthly caps and alerts as of a cut with the digests
of that evidence, and the register of statements issued (table `statement`)."""

# ruff: noqa: S608 - SQL here is built from fixed fragments and placeholders only.
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from meter.adapters.store.database import Database, fetchone, placeholders
from meter.core.durations import DAY_MS
from meter.core.statement import AlertFact, CapUse, Digest, WindowFact

__all__ = [
    "StoredStatement",
    "event_time_seen",
    "get_statement",
    "ingest_cut",
    "list_statements",
    "month_caps",
    "org_alerts",
    "record_statement",
    "successor",
    "superseded_final",
    "window_evidence",
    "window_facts",
]

_LONGEST_WINDOW_MS = 32 * DAY_MS
"""No stored window is longer (a calendar month): bounds an overlap search on the index."""
_LATEST = "ROW_NUMBER() OVER (PARTITION BY window_start ORDER BY revision DESC, seq) AS rn"


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def ingest_cut(db: Database, requested_ms: int | None) -> int | None:
    """The newest ingest time at or before `requested_ms` (any time when None): counting what
    was stored up to it is the same whatever time in the gap to the next transaction is asked."""
    found: list[int] = []
    for table in ("window_revision", "alert"):
        sql = f"SELECT MAX(ingested_at) FROM {table}"
        params: tuple[int, ...] = ()
        if requested_ms is not None:
            sql += " WHERE ingested_at <= ?"
            params = (requested_ms,)
        row = fetchone(db, sql, params)
        if row is not None and row[0] is not None:
            found.append(int(row[0]))
    return max(found) if found else None


def event_time_seen(db: Database, cut: int) -> int | None:
    """The latest start of a stored fixed window of any subject, as of `cut`: the workers'
    event time had reached at least that far."""
    sizes = [
        str(r[0])
        for r in db.fetchall(
            "SELECT window_size FROM stored_window_size WHERE size_ms IS NOT NULL "
            "AND first_ingested_at <= ?",
            (cut,),
        )
    ]
    best: int | None = None
    for subject_type in ("app", "org"):
        for size in sizes:
            row = fetchone(
                db,
                "SELECT window_start FROM window_revision WHERE subject_type = ? AND "
                "window_size = ? AND ingested_at <= ? ORDER BY window_start DESC LIMIT 1",
                (subject_type, size, cut),
            )
            if row is not None and (best is None or int(row[0]) > best):
                best = int(row[0])
    return best


def _latest_org_windows(
    db: Database,
    org_id: str,
    size: str,
    from_ms: int,
    to_ms: int,
    cut: int,
    columns: str,
    *,
    overlap: bool,
) -> list[tuple[Any, ...]]:
    """The latest revision as of `cut` of each of the organisation's own windows of `size` that
    start in [from, to) (`overlap`: that overlap it)."""
    low = from_ms - _LONGEST_WINDOW_MS if overlap else from_ms
    extra = " AND window_end > ?" if overlap else ""
    params: list[Any] = ["org", org_id, size, low, to_ms, cut] + ([from_ms] if overlap else [])
    sql = (
        f"SELECT {columns} FROM (SELECT *, {_LATEST} FROM window_revision WHERE "
        "subject_type = ? AND subject = ? AND window_size = ? AND window_start >= ? "
        f"AND window_start < ? AND ingested_at <= ?{extra}) w WHERE rn = 1 ORDER BY window_start"
    )
    return db.fetchall(sql, params)


def window_facts(
    db: Database, org_id: str, size: str, from_ms: int, to_ms: int, cut: int
) -> list[WindowFact]:
    rows = _latest_org_windows(
        db,
        org_id,
        size,
        from_ms,
        to_ms,
        cut,
        "window_end, revision, base, late_events",
        overlap=False,
    )
    return [WindowFact(int(e), int(r), str(b), int(n)) for e, r, b, n in rows]


def month_caps(
    db: Database, org_id: str, size: str, from_ms: int, to_ms: int, cut: int
) -> dict[int, list[CapUse]]:
    """Month start -> the organisation's caps on its `size` months that overlap the period."""
    out: dict[int, list[CapUse]] = {}
    rows = _latest_org_windows(
        db, org_id, size, from_ms, to_ms, cut, "window_start, payload", overlap=True
    )
    for start, payload in rows:
        caps = json.loads(payload).get("caps") or []
        out[int(start)] = [
            CapUse(str(c["cap"]), str(c["metric"]), int(c["limit"]), int(c["used"])) for c in caps
        ]
    return out


def _digest(lines: Iterable[str]) -> Digest:
    h = hashlib.sha256()
    n = 0
    for line in lines:
        h.update(line.encode())
        n += 1
    return Digest(n, h.hexdigest())


def window_evidence(
    db: Database, org_id: str, sizes: Sequence[str], from_ms: int, to_ms: int, cut: int
) -> Digest:
    """Every stored revision (as of `cut`) of the organisation's and its apps' windows of
    `sizes` that overlap the period: the evidence the statement was summed from."""
    if not sizes:
        return _digest(())
    sql = (
        "SELECT record_id, revision, payload_sha256 FROM window_revision WHERE "
        f"subject_type IN ('app', 'org') AND window_size IN ({placeholders(len(sizes))}) "
        "AND window_start >= ? AND window_start < ? AND window_end > ? AND org_id = ? "
        "AND ingested_at <= ?"
    )
    params = [*sizes, from_ms - _LONGEST_WINDOW_MS, to_ms, from_ms, org_id, cut]
    # sorted here, by code point: a database's collation must not change the digest
    lines = sorted(f"{i} {r} {s}\n" for i, r, s in db.fetchall(sql, params))
    return _digest(lines)


_ALERT_COLUMNS = (
    "id, kind, severity, subject_type, subject, cap, metric, threshold, window_size, "
    "window_start, window_end, limit_value, used, crossed_at, late, app_id, recipient, rule, "
    "payload_sha256"
)


def org_alerts(
    db: Database, org_id: str, from_ms: int, to_ms: int, cut: int
) -> tuple[list[AlertFact], Digest]:
    """The organisation's alerts crossed in [from, to) and stored by `cut`, by crossing time."""
    rows = db.fetchall(
        f"SELECT {_ALERT_COLUMNS} FROM alert WHERE org_id = ? AND crossed_at >= ? "
        "AND crossed_at < ? AND ingested_at <= ?",
        (org_id, from_ms, to_ms, cut),
    )
    facts = [
        AlertFact(
            id=str(r[0]),
            kind=str(r[1]),
            severity=str(r[2]),
            subject_type=str(r[3]),
            subject=str(r[4]),
            cap=r[5],
            metric=str(r[6]),
            threshold=None if r[7] is None else float(r[7]),
            window_size=str(r[8]),
            window_start_ms=int(r[9]),
            window_end_ms=int(r[10]),
            limit=_int(r[11]),
            used=int(r[12]),
            crossed_at_ms=int(r[13]),
            late=bool(r[14]),
            app_id=r[15],
            recipient=r[16],
            rule=r[17],
        )
        for r in rows
    ]
    facts.sort(key=lambda a: (a.crossed_at_ms, a.id))
    digest = _digest(sorted(f"{r[0]} {r[18]}\n" for r in rows))
    return facts, digest


# -- the register of statements -------------------------------------------------------------------
@dataclass(frozen=True)
class StoredStatement:
    id: str
    org_id: str
    period_from: int
    period_to: int
    tz: str
    scope_sha256: str
    content_sha256: str
    as_of: int | None
    status: str
    supersedes: str | None
    body: bytes
    signature: bytes | None
    created_at: int


_COLUMNS = (
    "id, org_id, period_from, period_to, tz, scope_sha256, content_sha256, as_of, status, "
    "supersedes, body, signature, created_at"
)


def _stored(r: tuple[Any, ...]) -> StoredStatement:
    return StoredStatement(
        id=str(r[0]),
        org_id=str(r[1]),
        period_from=int(r[2]),
        period_to=int(r[3]),
        tz=str(r[4]),
        scope_sha256=str(r[5]),
        content_sha256=str(r[6]),
        as_of=_int(r[7]),
        status=str(r[8]),
        supersedes=r[9],
        body=str(r[10]).encode(),
        signature=None if r[11] is None else str(r[11]).encode(),
        created_at=int(r[12]),
    )


def record_statement(db: Database, s: StoredStatement) -> bool:
    """Add `s` to the register (True), or keep the one already there (False; a signature it
    lacked is added)."""
    with db.transaction():
        added = db.execute(
            f"INSERT INTO statement ({_COLUMNS}) VALUES ({placeholders(13)}) "
            "ON CONFLICT (id) DO NOTHING",
            (
                s.id,
                s.org_id,
                s.period_from,
                s.period_to,
                s.tz,
                s.scope_sha256,
                s.content_sha256,
                s.as_of,
                s.status,
                s.supersedes,
                s.body.decode(),
                None if s.signature is None else s.signature.decode(),
                s.created_at,
            ),
        )
        if not added and s.signature is not None:
            db.execute(
                "UPDATE statement SET signature = ? WHERE id = ? AND signature IS NULL",
                (s.signature.decode(), s.id),
            )
    return bool(added)


def get_statement(db: Database, statement_id: str) -> StoredStatement | None:
    row = fetchone(db, f"SELECT {_COLUMNS} FROM statement WHERE id = ?", (statement_id,))
    return None if row is None else _stored(row)


def list_statements(db: Database, org_id: str | None, limit: int) -> list[StoredStatement]:
    """Newest first (by creation, then id)."""
    where, params = ("WHERE org_id = ? ", [org_id]) if org_id is not None else ("", [])
    rows = db.fetchall(
        f"SELECT {_COLUMNS} FROM statement {where}ORDER BY created_at DESC, id DESC LIMIT ?",
        [*params, limit],
    )
    return [_stored(r) for r in rows]


def superseded_final(db: Database, scope: str, as_of: int, content: str) -> str | None:
    """The id of the latest final statement of `scope` cut before `as_of` whose figures are not
    `content`: the one a statement with these figures supersedes."""
    row = fetchone(
        db,
        "SELECT id FROM statement WHERE scope_sha256 = ? AND status = 'final' AND as_of < ? "
        "AND content_sha256 <> ? ORDER BY as_of DESC, id DESC LIMIT 1",
        (scope, as_of, content),
    )
    return None if row is None else str(row[0])


def successor(db: Database, statement_id: str) -> str | None:
    """The first statement that names `statement_id` as the one it supersedes."""
    row = fetchone(
        db,
        "SELECT id FROM statement WHERE supersedes = ? ORDER BY as_of, id LIMIT 1",
        (statement_id,),
    )
    return None if row is None else str(row[0])

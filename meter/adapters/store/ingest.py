"""Records to rows: one batch of consumed records becomes evidence, current totals, alerts and
the partitions' next offsets, all in one transaction. Applying a batch twice adds nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meter.adapters.store.database import Database, Row, fetchone, placeholders
from meter.adapters.store.records import (
    COMPLETE,
    AlertRecord,
    Cell,
    Consumed,
    RecordError,
    WindowRecord,
    parse_alert_record,
    parse_window_record,
)
from meter.core.durations import parse_duration

log = logging.getLogger(__name__)

WINDOWS = "windows"
ALERTS = "alerts"
ENDPOINT = "endpoint"
RECIPIENT = "recipient"
EXPIRED_PART = "expired"
_CHUNK = 200
_WRITER_LOCK = 0x6D657466  # PostgreSQL advisory lock: one batch at a time, as SQLite's IMMEDIATE

Key = tuple[str, str, str, int]


@dataclass
class BatchResult:
    """What a batch changed: window records stored as evidence (`windows`), of which `applied`
    changed current totals; `replays` (already stored, or not newer than the stored revision);
    alerts stored and repeated; records rejected."""

    windows: int = 0
    applied: int = 0
    replays: int = 0
    alerts: int = 0
    repeated_alerts: int = 0
    rejected: int = 0
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)


@dataclass
class _Change:
    """What the batch does to one window's current totals."""

    latest: WindowRecord
    complete: WindowRecord | None = None
    """A complete record applied: its breakdown replaces both parts."""
    expired: WindowRecord | None = None
    """The latest expired record applied after it (or after the stored complete part)."""


def size_ms(window_size: str) -> int | None:
    """Milliseconds of a fixed window size (`15m`, `1h`); None for calendar months."""
    try:
        return parse_duration(window_size)
    except ValueError:
        return None


def apply_batch(
    db: Database, batch: Sequence[Consumed], kinds: Mapping[str, str], now_ms: int
) -> BatchResult:
    """Store `batch` (records in offset order per partition; `kinds` maps each topic to WINDOWS
    or ALERTS) and the next offset of every partition in it, in one transaction."""
    with db.transaction():
        if db.dialect == "postgresql":
            db.execute("SELECT pg_advisory_xact_lock(?)", (_WRITER_LOCK,))
        return _apply(db, batch, kinds, now_ms)


def stored_offsets(db: Database) -> dict[tuple[str, int], int]:
    """The next offset to read per (topic, partition), as committed with the rows."""
    rows = db.fetchall("SELECT topic, partition, next_offset FROM consumer_offset")
    return {(str(t), int(p)): int(o) for t, p, o in rows}


def _apply(
    db: Database, batch: Sequence[Consumed], kinds: Mapping[str, str], now_ms: int
) -> BatchResult:
    result = BatchResult()
    last = fetchone(db, "SELECT seq, ingested_at FROM window_revision ORDER BY seq DESC LIMIT 1")
    seq = int(last[0]) if last else 0
    # Monotonic, so an as-of cut never splits what one batch stored.
    ingested_at = max(now_ms, int(last[1])) if last else now_ms
    windows: list[tuple[Consumed, WindowRecord]] = []
    alerts: list[tuple[Consumed, AlertRecord]] = []
    rejected: list[tuple[Consumed, str]] = []
    for rec in batch:
        position = (rec.topic, rec.partition)
        result.offsets[position] = max(result.offsets.get(position, 0), rec.offset + 1)
        kind = kinds.get(rec.topic)
        try:
            if kind == WINDOWS:
                windows.append((rec, parse_window_record(rec.value)))
            elif kind == ALERTS:
                alerts.append((rec, parse_alert_record(rec.value)))
            else:
                raise RecordError(f"topic {rec.topic} is not one the store reads")
        except RecordError as exc:
            rejected.append((rec, str(exc)))
    _store_windows(db, windows, seq, ingested_at, result)
    _store_alerts(db, alerts, ingested_at, result)
    _store_rejected(db, rejected, ingested_at, result)
    db.executemany(
        "INSERT INTO consumer_offset (topic, partition, next_offset, updated_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (topic, partition) DO UPDATE SET "
        "next_offset = excluded.next_offset, updated_at = excluded.updated_at",
        [(t, p, o, ingested_at) for (t, p), o in sorted(result.offsets.items())],
    )
    return result


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _known(db: Database, table: str, column: str, ids: Sequence[str]) -> dict[str, str]:
    """id -> payload_sha256 of the ids already stored."""
    out: dict[str, str] = {}
    for chunk in _chunks(ids):
        sql = (
            f"SELECT {column}, payload_sha256 FROM {table} "  # noqa: S608 - fixed names
            f"WHERE {column} IN ({placeholders(len(chunk))})"
        )
        out.update({str(i): str(s) for i, s in db.fetchall(sql, chunk)})
    return out


def _new_only(
    db: Database, table: str, column: str, items: list[tuple[Consumed, WindowRecord]]
) -> list[tuple[Consumed, WindowRecord]]:
    """The records not stored yet (first of each id in the batch); repeats are logged when
    their content differs from what is stored."""
    known = _known(db, table, column, sorted({r.id for _, r in items}))
    fresh: list[tuple[Consumed, WindowRecord]] = []
    seen: set[str] = set()
    for rec, record in items:
        if record.id in seen or record.id in known:
            stored = known.get(record.id)
            if stored is not None and stored != record.payload_sha256:
                log.warning("window record %s seen again with different content (%s %d@%d); "
                            "the first is kept", record.id, rec.topic, rec.partition,
                            rec.offset)  # fmt: skip
            continue
        seen.add(record.id)
        fresh.append((rec, record))
    return fresh


def _store_windows(
    db: Database,
    items: list[tuple[Consumed, WindowRecord]],
    seq: int,
    ingested_at: int,
    result: BatchResult,
) -> None:
    fresh = _new_only(db, "window_revision", "record_id", items)
    result.replays += len(items) - len(fresh)
    if not fresh:
        return
    evidence, cells = [], []
    for rec, r in fresh:
        seq += 1
        evidence.append((
            r.id, seq, r.subject_type, r.subject, r.org_id, r.window_size, r.window_start,
            r.window_end, r.revision, r.base, r.calls, r.records, r.late_events, r.emitted_at,
            r.payload, r.payload_sha256, rec.topic, rec.partition, rec.offset, ingested_at,
        ))  # fmt: skip
        cells += [(r.id, ENDPOINT, c.name, c.calls, c.records) for c in r.endpoints]
        cells += [(r.id, RECIPIENT, c.name, c.calls, c.records) for c in r.recipients]
    db.executemany(
        "INSERT INTO window_revision (record_id, seq, subject_type, subject, org_id, "
        "window_size, window_start, window_end, revision, base, calls, records, late_events, "
        "emitted_at, payload, payload_sha256, source_topic, source_partition, source_offset, "
        "ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        evidence,
    )
    db.executemany(
        "INSERT INTO window_revision_cell (record_id, dimension, name, calls, records) "
        "VALUES (?, ?, ?, ?, ?)",
        cells,
    )
    db.executemany(
        "INSERT INTO stored_window_size (window_size, size_ms, first_ingested_at) "
        "VALUES (?, ?, ?) ON CONFLICT (window_size) DO NOTHING",
        [(s, size_ms(s), ingested_at) for s in sorted({r.window_size for _, r in fresh})],
    )
    result.windows += len(fresh)
    changes = _fold(db, [r for _, r in fresh], result)
    _write_current(db, changes, ingested_at)


def _current_revisions(db: Database, keys: Sequence[Key]) -> dict[Key, int]:
    out: dict[Key, int] = {}
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i : i + _CHUNK]
        rows = ", ".join("(?, ?, ?, ?)" for _ in chunk)
        sql = (
            "SELECT subject_type, subject, window_size, window_start, revision FROM usage_window "  # noqa: S608 - placeholders only
            "WHERE (subject_type, subject, window_size, window_start) IN "
            f"(VALUES {rows})"
        )
        for st, s, size, start, rev in db.fetchall(sql, [v for k in chunk for v in k]):
            out[(str(st), str(s), str(size), int(start))] = int(rev)
    return out


def _fold(db: Database, fresh: list[WindowRecord], result: BatchResult) -> dict[Key, _Change]:
    """Each window's change from the batch's records, in order: a higher revision replaces the
    totals; a complete one replaces both breakdown parts, an expired one the expired part."""
    revisions = _current_revisions(db, sorted({r.key for r in fresh}))
    changes: dict[Key, _Change] = {}
    for r in fresh:
        stored = revisions.get(r.key)
        if stored is not None and r.revision <= stored:
            result.replays += 1
            continue
        revisions[r.key] = r.revision
        result.applied += 1
        change = changes.get(r.key)
        if change is None:
            change = changes[r.key] = _Change(r)
        change.latest = r
        if r.base == COMPLETE:
            change.complete, change.expired = r, None
        else:
            change.expired = r
    return changes


def _key_cells(key: Key, part: str, cells: tuple[Cell, ...]) -> list[Row]:
    return [(*key, part, c.name, c.calls, c.records) for c in cells]


def _write_current(db: Database, changes: dict[Key, _Change], ingested_at: int) -> None:
    if not changes:
        return
    totals, caps = [], []
    endpoints: list[Row] = []
    recipients: list[Row] = []
    clear_all, clear_expired = [], []
    for key, ch in sorted(changes.items()):
        r = ch.latest
        totals.append((
            *key, r.window_end, r.org_id, r.revision, r.base, r.calls, r.records, r.late_events,
            r.id, ch.complete.id if ch.complete else None, r.emitted_at, ingested_at,
        ))  # fmt: skip
        caps += [(*key, c.cap, c.metric, c.limit, c.used, c.utilization) for c in r.caps]
        if ch.complete is not None:
            clear_all.append(key)
            endpoints += _key_cells(key, COMPLETE, ch.complete.endpoints)
            recipients += _key_cells(key, COMPLETE, ch.complete.recipients)
        elif ch.expired is not None:
            clear_expired.append(key)
        if ch.expired is not None:
            endpoints += _key_cells(key, EXPIRED_PART, ch.expired.endpoints)
            recipients += _key_cells(key, EXPIRED_PART, ch.expired.recipients)
    db.executemany(
        "INSERT INTO usage_window (subject_type, subject, window_size, window_start, window_end, "
        "org_id, revision, base, calls, records, late_events, record_id, complete_record_id, "
        "emitted_at, ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (subject_type, subject, window_size, window_start) DO UPDATE SET "
        "window_end = excluded.window_end, org_id = excluded.org_id, "
        "revision = excluded.revision, base = excluded.base, calls = excluded.calls, "
        "records = excluded.records, late_events = excluded.late_events, "
        "record_id = excluded.record_id, "
        "complete_record_id = COALESCE(excluded.complete_record_id, "
        "usage_window.complete_record_id), "
        "emitted_at = excluded.emitted_at, ingested_at = excluded.ingested_at "
        "WHERE excluded.revision > usage_window.revision",
        totals,
    )
    where = "subject_type = ? AND subject = ? AND window_size = ? AND window_start = ?"
    db.executemany(f"DELETE FROM usage_window_cap WHERE {where}", list(changes))  # noqa: S608
    db.executemany(
        "INSERT INTO usage_window_cap (subject_type, subject, window_size, window_start, cap, "
        "metric, limit_value, used, utilization) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        caps,
    )
    for table, column, rows in (
        ("usage_window_endpoint", ENDPOINT, endpoints),
        ("usage_window_recipient", RECIPIENT, recipients),
    ):
        db.executemany(f"DELETE FROM {table} WHERE {where}", clear_all)  # noqa: S608
        db.executemany(
            f"DELETE FROM {table} WHERE {where} AND part = ?",  # noqa: S608
            [(*k, EXPIRED_PART) for k in clear_expired],
        )
        db.executemany(
            f"INSERT INTO {table} (subject_type, subject, window_size, window_start, part, "  # noqa: S608
            f"{column}, calls, records) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def _store_alerts(
    db: Database, items: list[tuple[Consumed, AlertRecord]], ingested_at: int, result: BatchResult
) -> None:
    if not items:
        return
    known = _known(db, "alert", "id", sorted({a.id for _, a in items}))
    rows, seen = [], set(known)
    for rec, a in items:
        if a.id in seen:
            result.repeated_alerts += 1
            continue
        seen.add(a.id)
        rows.append((
            a.id, a.kind, a.severity, a.subject_type, a.subject, a.org_id, a.cap, a.metric,
            a.window_size, a.window_start, a.window_end, a.limit, a.used, a.threshold,
            a.utilization, a.crossed_at, a.emitted_at, int(a.late), a.event_id, a.app_id,
            a.recipient, a.rule, a.payload, a.payload_sha256, rec.topic, rec.partition,
            rec.offset, ingested_at,
        ))  # fmt: skip
    db.executemany(
        "INSERT INTO alert (id, kind, severity, subject_type, subject, org_id, cap, metric, "  # noqa: S608
        "window_size, window_start, window_end, limit_value, used, threshold, utilization, "
        "crossed_at, emitted_at, late, event_id, app_id, recipient, rule, payload, "
        "payload_sha256, source_topic, source_partition, source_offset, ingested_at) VALUES "
        f"({placeholders(28)}) ON CONFLICT (id) DO NOTHING",
        rows,
    )
    result.alerts += len(rows)


def _store_rejected(
    db: Database, items: list[tuple[Consumed, str]], ingested_at: int, result: BatchResult
) -> None:
    if not items:
        return
    rows = []
    for rec, reason in items:
        value = rec.value
        text = value.decode("utf-8", errors="replace") if value is not None else None
        digest = hashlib.sha256(value).hexdigest() if value is not None else None
        rows.append((rec.topic, rec.partition, rec.offset, reason, text, digest, ingested_at))
    db.executemany(
        "INSERT INTO rejected_record (source_topic, source_partition, source_offset, reason, "
        "payload, payload_sha256, ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING",
        rows,
    )
    result.rejected += len(rows)
    first, reason = items[0]
    log.warning("kept %d invalid record(s) aside in rejected_record, not applied; first: %s "
                "partition %d offset %d: %s", len(items), first.topic, first.partition,
                first.offset, reason)  # fmt: skip

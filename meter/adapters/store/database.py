"""The store's two backends behind one small interface: SQLite (stdlib `sqlite3`, WAL mode) and
PostgreSQL (psycopg 3). SQL is written once with `?` placeholders; numbered migrations in
`migrations/` are applied at open and recorded in `schema_version`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import psycopg

from meter.adapters.store.settings import DATABASE, is_postgres, redact_database
from meter.core.errors import ConfigError, UnavailableError

log = logging.getLogger(__name__)

Row = tuple[Any, ...]
Params = Sequence[Any]

_MIGRATION_RE = re.compile(r"([0-9]{4})_[a-z0-9_]+\.sql")
_MIGRATION_LOCK = 0x6D657465  # 'mete': PostgreSQL advisory lock around migrations
SQLITE_BUSY_TIMEOUT_S = 30.0
OPERATIONAL_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.OperationalError,
    psycopg.OperationalError,
)
"""The database went away, is locked for too long, or its disk is full: not a bug in the data."""


class Database(Protocol):
    """A connection to the store's database. `transaction()` wraps work that commits together
    (or not at all); statements outside one run on their own."""

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        ...

    @property
    def label(self) -> str:
        """Where the data is, for logs (no password)."""
        ...

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...

    def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    def transaction(self, *, write: bool = True) -> contextlib.AbstractContextManager[None]:
        """Commit on success, roll back on an exception. A read transaction sees one snapshot."""
        ...

    def close(self) -> None: ...


def fetchone(db: Database, sql: str, params: Params = ()) -> Row | None:
    rows = db.fetchall(sql, params)
    return rows[0] if rows else None


def placeholders(n: int) -> str:
    """`?, ?, ?` for an IN list of `n` values."""
    return ", ".join("?" * n)


class SqliteDatabase:
    """One SQLite file in WAL mode: readers (the API) never block the store's writes."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(
            path, isolation_level=None, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False
        )
        self.conn.execute("PRAGMA journal_mode=WAL")
        # Durable against a crash of the process; a power loss can lose the last transactions,
        # rows and offsets together, which are then read again from Kafka.
        self.conn.execute("PRAGMA synchronous=NORMAL")

    @property
    def label(self) -> str:
        return f"SQLite {self.path}"

    def execute(self, sql: str, params: Params = ()) -> int:
        return self.conn.execute(sql, tuple(params)).rowcount

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        self.conn.executemany(sql, (tuple(r) for r in rows))

    def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return list(self.conn.execute(sql, tuple(params)).fetchall())

    @contextlib.contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[None]:
        # IMMEDIATE takes the write lock at once, so two writers queue instead of failing.
        self.conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


class PostgresDatabase:
    """A PostgreSQL connection (psycopg 3), autocommit outside `transaction()`."""

    dialect = "postgresql"

    def __init__(self, conn: psycopg.Connection[Row], url: str) -> None:
        self.conn = conn
        self.url = url

    @property
    def label(self) -> str:
        return f"PostgreSQL {redact_database(self.url)}"

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def execute(self, sql: str, params: Params = ()) -> int:
        return self.conn.execute(self._sql(sql), tuple(params)).rowcount

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        batch = [tuple(r) for r in rows]
        if batch:
            with self.conn.cursor() as cur:
                cur.executemany(self._sql(sql), batch)

    def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return self.conn.execute(self._sql(sql), tuple(params)).fetchall()

    @contextlib.contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[None]:
        with self.conn.transaction():
            if not write:
                self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield

    def close(self) -> None:
        self.conn.close()


def _connect_postgres(url: str, timeout_s: float) -> PostgresDatabase:
    """Connect, retrying until `timeout_s` has passed (a database starting next to the store)."""
    deadline = time.monotonic() + timeout_s
    warned = False
    while True:
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if time.monotonic() >= deadline:
                raise UnavailableError(
                    f"cannot reach the database {redact_database(url)} ({cause}) after "
                    f"{timeout_s:.0f}s: check --database / METER_DATABASE"
                ) from exc
            if not warned:
                log.warning("database %s does not answer (%s); waiting up to %.0fs",
                            redact_database(url), cause, timeout_s)  # fmt: skip
                warned = True
            time.sleep(1.0)
            continue
        return PostgresDatabase(conn, url)


def open_database(url: str, *, timeout_s: float = 60.0, migrate: bool = True) -> Database:
    """Open the database at `url` (a `postgresql://` URL or an SQLite file path) and bring its
    schema up to date."""
    db: Database
    if is_postgres(url):
        db = _connect_postgres(url, timeout_s)
    else:
        try:
            db = SqliteDatabase(Path(url))
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(DATABASE.label, f"cannot open the SQLite file {url}: {exc}") from exc
    if migrate:
        try:
            apply_migrations(db)
        except BaseException:
            db.close()
            raise
    return db


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped with the package, in order."""
    found = []
    for entry in resources.files("meter.adapters.store").joinpath("migrations").iterdir():
        match = _MIGRATION_RE.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def statements(script: str) -> list[str]:
    """The statements of a migration file: `--` comments dropped, split on `;`."""
    text = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    return [s.strip() for s in text.split(";") if s.strip()]


def schema_version(db: Database) -> int:
    row = fetchone(db, "SELECT COALESCE(MAX(version), 0) FROM schema_version")
    return int(row[0]) if row else 0


def apply_migrations(db: Database) -> list[int]:
    """Apply the migrations the database has not had, each in its own transaction; returns
    their versions. Safe when several processes open the database at once."""
    applied: list[int] = []
    for version, name, script in migrations():
        with db.transaction():
            if db.dialect == "postgresql":
                db.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
            )
            if schema_version(db) >= version:
                continue
            for statement in statements(script):
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, int(time.time() * 1000)),
            )
        applied.append(version)
        log.info("database %s: applied migration %s", db.label, name)
    return applied

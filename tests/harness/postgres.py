"""A real PostgreSQL server for tests, run from Debian's binaries in a temporary directory.

PostgreSQL refuses to run as root, and the tests run as root: the server runs as the
unprivileged user `nobody`, in a directory it owns, on a free loopback port, with its socket
inside that directory. `postgres_server()` starts one and stops it (and removes the directory).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from meter.adapters.broker import free_port

USER = "nobody"
SUPERUSER = "postgres"


def postgres_bin_dir() -> Path:
    """The newest installed server's bin directory; AssertionError with the fix when none is."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major)
    if not found:
        raise AssertionError(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): the store's "
            "tests need a real server; run scripts/setup (it installs Debian's postgresql)"
        )
    return Path(found[-1]).parent


def _major(path: str) -> int:
    part = Path(path).parents[1].name
    return int(part) if part.isdigit() else 0


@dataclass
class PostgresServer:
    """One running server: `url(db)` connects as the superuser; `create_database()` makes a
    fresh database for one test."""

    bin_dir: Path
    root: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "meter") -> str:
        """A new empty database; its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", USER, "--", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def start(self) -> None:
        init = self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-A", "trust",
            "-U", SUPERUSER, "-E", "UTF8", "--no-sync", "--locale=C",
        )  # fmt: skip
        if init.returncode != 0:
            raise AssertionError(f"initdb failed ({init.returncode}):\n{init.stdout}{init.stderr}")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F"
        started = self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path),
            "-w", "-t", "60", "-o", options, "start",
        )  # fmt: skip
        if started.returncode != 0:
            raise AssertionError(
                f"PostgreSQL did not start ({started.returncode}):\n{started.stdout}"
                f"{started.stderr}\n{self.log_tail()}"
            )

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
                      "stop")  # fmt: skip


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a server for the caller (a session fixture); stop it and remove its files after."""
    bin_dir = postgres_bin_dir()
    try:
        nobody = pwd.getpwnam(USER)
    except KeyError:
        raise AssertionError(f"no user {USER!r} to run PostgreSQL as") from None
    root = Path(tempfile.mkdtemp(prefix="meter-pg-"))
    os.chown(root, nobody.pw_uid, nobody.pw_gid)
    server = PostgresServer(bin_dir, root, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

"""A worker's data dir: one process at a time, and local RocksDB state trusted only after a clean
stop.

faust writes table keys to RocksDB before their changelog records reach Kafka, and after an
unclean exit (SIGKILL, crash, power loss) it replays the changelog's tail over the local files.
That leaves some keys as of an older record and others as of a newer one: a store that is no
longer a prefix of the changelog, from which counts were lost. So the local table files are kept
only when the previous run left the clean-stop marker, which it writes after every changelog
record it queued was acknowledged; otherwise they are removed and faust restores every partition
from the changelog, which is a true prefix of what was written.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meter.core.errors import ConfigError

log = logging.getLogger(__name__)

CLEAN_STOP = "clean-stop"
LOCK = "worker.lock"
TABLES = Path("v1") / "tables"


def table_dirs(data_dir: Path) -> list[Path]:
    """The local RocksDB files of faust's tables (one directory per table partition)."""
    tables = data_dir / TABLES
    if not tables.is_dir():
        return []
    return sorted(p for p in tables.iterdir() if p.is_dir() and p.suffix == ".db")


def discard_unless_clean(data_dir: Path) -> list[Path]:
    """Remove the local table files unless the last run stopped cleanly; remove the marker
    either way (this run must earn its own). Returns the table partitions removed."""
    marker = data_dir / CLEAN_STOP
    clean = marker.exists()
    marker.unlink(missing_ok=True)
    if clean:
        return []
    removed = table_dirs(data_dir)
    for path in removed:
        shutil.rmtree(path)
    # faust keeps backups next to the partitions; they are as stale as the partitions.
    tables = data_dir / TABLES
    for path in tables.glob("*-backups") if tables.is_dir() else ():
        shutil.rmtree(path)
    return removed


def mark_clean_stop(data_dir: Path) -> None:
    marker = data_dir / CLEAN_STOP
    marker.write_text("the last run stopped with every changelog record acknowledged\n")


@contextmanager
def exclusive(data_dir: Path) -> Iterator[None]:
    """Hold the data dir for this process: a second worker on the same dir is refused (it would
    share, or remove, this one's RocksDB files)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(
            "--data-dir / METER_DATA_DIR", f"cannot use {data_dir}: {exc.strerror}"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                "--data-dir / METER_DATA_DIR",
                f"{data_dir} is in use by another worker process; give each worker its own",
            ) from None
        yield
    finally:
        os.close(fd)

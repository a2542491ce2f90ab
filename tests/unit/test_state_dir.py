"""A worker's local state is trusted only after a clean stop; every changelog send is tracked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meter.adapters.changelog import ChangelogTracker
from meter.adapters.state_dir import (
    CLEAN_STOP,
    discard_unless_clean,
    exclusive,
    mark_clean_stop,
    table_dirs,
)
from meter.core.errors import ConfigError


def _tables(data_dir: Path, partitions: int = 2) -> None:
    tables = data_dir / "v1" / "tables"
    for p in range(partitions):
        (tables / f"ledger-{p}.db").mkdir(parents=True)
        (tables / f"ledger-{p}.db" / "CURRENT").write_text("x")
    (tables / "ledger-backups").mkdir()


def test_after_an_unclean_exit_the_local_tables_are_removed(tmp_path: Path) -> None:
    _tables(tmp_path)
    removed = discard_unless_clean(tmp_path)
    assert [p.name for p in removed] == ["ledger-0.db", "ledger-1.db"]
    assert table_dirs(tmp_path) == []
    assert not (tmp_path / "v1" / "tables" / "ledger-backups").exists()


def test_after_a_clean_stop_they_are_kept_and_the_marker_is_consumed(tmp_path: Path) -> None:
    _tables(tmp_path)
    mark_clean_stop(tmp_path)
    assert discard_unless_clean(tmp_path) == []
    assert [p.name for p in table_dirs(tmp_path)] == ["ledger-0.db", "ledger-1.db"]
    assert not (tmp_path / CLEAN_STOP).exists()
    # The marker is used up: a crash of this run (no new marker) discards them next time.
    assert len(discard_unless_clean(tmp_path)) == 2


def test_a_new_data_dir_needs_nothing(tmp_path: Path) -> None:
    assert discard_unless_clean(tmp_path / "new") == []


def test_a_data_dir_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    with (
        exclusive(tmp_path),
        pytest.raises(ConfigError, match="in use by another worker"),
        exclusive(tmp_path),
    ):
        pass
    with exclusive(tmp_path):  # released
        pass


def test_an_unusable_data_dir_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="METER_DATA_DIR"), exclusive(blocker / "data"):
        pass


def test_the_tracker_waits_for_every_send_and_reports_a_failure() -> None:
    failures: list[BaseException] = []

    async def scenario() -> None:
        tracker = ChangelogTracker(failures.append)
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        tracker.track(first)
        tracker.track(second)
        assert not tracker.complete
        waiter = asyncio.ensure_future(tracker.wait())
        first.set_result("ok")
        await asyncio.sleep(0)
        assert not waiter.done()  # the second send is still out
        second.set_result("ok")
        await waiter
        assert tracker.complete
        bad = loop.create_future()
        tracker.track(bad)
        bad.set_exception(RuntimeError("refused"))
        await asyncio.sleep(0)
        assert not tracker.complete
        cancelled = loop.create_future()
        tracker.track(cancelled)
        cancelled.cancel()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert [str(f) for f in failures] == ["refused"]

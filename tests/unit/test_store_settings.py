"""`meter store` settings: declared as Options, flags over variables over defaults, bad values name
the flag, passwords never printed, and the command line offers every flag."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from meter.adapters.store.settings import STORE_OPTIONS, StoreSettings, redact_database
from meter.cli import build_parser, main
from meter.config import markdown_table
from meter.core.errors import ConfigError
from meter.worker_settings import WORKER_OPTIONS


def test_defaults_follow_the_state_dir_and_the_workers_names(tmp_path: Path) -> None:
    s = StoreSettings.load({}, {"METER_STATE_DIR": str(tmp_path)})
    assert s.database == str(tmp_path / "meter.db")
    assert (s.windows_topic, s.alerts_topic, s.group, s.batch) == (
        "usage-windows", "usage-alerts", "meter", 500,
    )  # fmt: skip
    assert s.client_id == "meter-store"
    assert not s.postgres
    worker = {o.flag: o for o in WORKER_OPTIONS}
    for o in STORE_OPTIONS:
        if o.flag in ("--windows-topic", "--alerts-topic"):
            assert o is worker[o.flag]  # the same declaration: same flag, variable, default


def test_a_flag_wins_over_its_variable() -> None:
    env = {"METER_DATABASE": "postgresql://u:pw@db:5432/meter", "METER_STORE_BATCH": "20",
           "METER_GROUP": "g", "METER_WINDOWS_TOPIC": "w"}  # fmt: skip
    s = StoreSettings.load({"batch": "7"}, env)
    assert (s.database, s.batch, s.group, s.windows_topic, s.client_id) == (
        "postgresql://u:pw@db:5432/meter", 7, "g", "w", "g-store",
    )  # fmt: skip
    assert s.postgres
    assert "pw" not in repr(s)
    assert "postgresql://u:***@db:5432/meter" in str(s)


@pytest.mark.parametrize(
    ("flags", "label", "words"),
    [
        ({"database": "mysql://db/meter"}, "--database / METER_DATABASE", "postgresql://"),
        ({"database": "postgresql:///meter"}, "--database / METER_DATABASE", "no host"),
        ({"batch": "0"}, "--batch / METER_STORE_BATCH", "positive"),
        ({"connect_timeout": "soon"}, "--connect-timeout / METER_CONNECT_TIMEOUT", "invalid"),
        ({"group": " "}, "--group / METER_GROUP", "empty"),
    ],
)
def test_a_bad_value_names_the_flag_and_the_variable(
    flags: dict[str, str], label: str, words: str
) -> None:
    with pytest.raises(ConfigError) as bad:
        StoreSettings.load(flags, {})
    assert bad.value.field == label
    assert words in str(bad.value)


def test_a_password_in_a_url_is_never_shown() -> None:
    assert redact_database("postgresql://meter:s3cret@h/db?sslmode=require") == (
        "postgresql://meter:***@h/db?sslmode=require"
    )
    assert redact_database("/var/lib/meter.db") == "/var/lib/meter.db"
    with pytest.raises(ConfigError) as bad:
        StoreSettings.load({"database": "postgresql://u:s3cret@h:x/db"}, {})
    assert "s3cret" not in str(bad.value)


def test_the_store_command_offers_every_flag_and_variable() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["store"].format_help().split())
    for o in STORE_OPTIONS:
        assert o.flag in text
        assert o.var in text
    table = markdown_table(STORE_OPTIONS)
    assert table.count("\n") == len(STORE_OPTIONS) + 1


def test_a_bad_setting_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["store", "--batch", "-3"], env={}) == 2
    assert "--batch / METER_STORE_BATCH" in capsys.readouterr().err


def test_a_database_that_cannot_be_opened_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    path = tmp_path / "a-file" / "meter.db"
    assert main(["store", "--database", str(path), "--bootstrap", "127.0.0.1:1"], env={}) == 2
    assert "--database / METER_DATABASE: cannot open the SQLite file" in capsys.readouterr().err

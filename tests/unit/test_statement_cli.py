"""`meter report` and `meter report verify` on the command line: mistakes exit 2 naming the flag,
an empty store gives an empty provisional statement, and verify exits 1 on anything but an
intact statement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meter.adapters.store.database import open_database
from meter.cli import main
from tests.harness.statements import DEMO_POLICY

YEAR = ["--from", "2022-01-01", "--to", "2023-01-01"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    database = tmp_path / "meter.db"
    open_database(str(database)).close()
    return {"METER_POLICY": str(DEMO_POLICY), "METER_DATABASE": str(database)}


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["report", *YEAR], "--org"),
        (["report", "--org", "microsoft", "--to", "2023-01-01"], "--from"),
        (["report", "--org", "microsoft", "--from", "2022-13-01", "--to", "2023-01-01"], "--from"),
        (["report", "--org", "microsoft", *YEAR, "--format", "csv"], "--out"),
        (["report", "--org", "microsoft", *YEAR, "--format", "pdf"], "--format"),
        (["report", "--org", "microsoft", *YEAR, "--tz", "Mars/Base"], "--tz"),
        (["report", "--org", "nobody", *YEAR], "--org"),
        (["report", "--org", "microsoft", "--from", "2022-01-01T12:00:00Z", "--to", "2023-01-01"],
         "--from"),
        (["report", "--org", "microsoft", *YEAR, "--out", "x", "--sign", "hmac:NOT_SET"],
         "--sign / METER_STATEMENT_KEY"),
        (["report", "--org", "microsoft", *YEAR, "--database", "/nonexistent/meter.db"],
         "--database / METER_DATABASE"),
    ],
)  # fmt: skip
def test_a_mistake_exits_2_naming_the_flag(
    args: list[str], flag: str, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args, env=env) == 2
    assert f"meter: configuration error: {flag}" in capsys.readouterr().err


def test_an_empty_store_gives_an_empty_provisional_statement(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["report", "--org", "microsoft", *YEAR, "--format", "json", "--out",
                 str(tmp_path / "out")], env=env) == 0  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    path = Path(printed[2].split()[1])
    doc = json.loads(path.read_bytes())
    assert (doc["as_of"], doc["status"], doc["totals"]) == (
        None, "provisional", {"calls": 0, "records": 0},
    )  # fmt: skip
    assert [a["id"] for a in doc["apps"]][:2] == ["ads", "azure"]
    assert main(["report", "verify", str(path)], env={}) == 0
    assert capsys.readouterr().out.endswith("the statement is intact\n")  # its name has its id
    path.write_bytes(path.read_bytes().replace(b'"calls":0', b'"calls":1', 1))
    assert main(["report", "verify", str(path)], env={}) == 1
    assert "FAIL  its file name gives id" in capsys.readouterr().out
    renamed = path.rename(tmp_path / "statement.json")
    assert main(["report", "verify", str(renamed)], env={}) == 0  # still canonical JSON...
    assert "nothing says which id it must have" in capsys.readouterr().out
    assert main(["report", "verify", str(renamed), "--id", "0" * 64], env={}) == 1
    assert "the id expected is 000" in capsys.readouterr().out

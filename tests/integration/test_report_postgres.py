"""Usage statements from a real PostgreSQL usage store: the same records (a year of the 2022
case, through meter's own ledger) give byte for byte the statement they give in SQLite, and its
register of statements (supersession, rebuilding as of a cut) works the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from meter.adapters.report.service import issue, rebuild_request
from meter.adapters.report.source import StatementRequest
from meter.adapters.report.verify import verify_statement
from meter.adapters.store.database import open_database
from meter.core.statement import Rules
from tests.harness.postgres import postgres_server
from tests.harness.statements import YEAR_2022, case_2022, demo_policy, store_records

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SHORT = Rules(grace_ms=60_000, late_horizon_ms=3_600_000, history_horizon_ms=3_600_000)


def test_postgresql_gives_the_statement_sqlite_gives(tmp_path: Path) -> None:
    case = case_2022(1500, seed=7, policy=demo_policy(tight=True))
    year = StatementRequest("microsoft", *YEAR_2022)
    sqlite = open_database(str(tmp_path / "meter.db"))
    with postgres_server() as server:
        postgres = open_database(server.create_database())
        try:
            last = 0
            for db in (sqlite, postgres):
                last = store_records(db, case.windows, case.alerts)
            for rules in (Rules(), SHORT):
                lite = issue(sqlite, case.policy, year, rules)
                pg = issue(postgres, case.policy, year, rules)
                assert pg.body == lite.body
                assert pg.recorded
            final = issue(postgres, case.policy, year, SHORT)
            assert (final.doc["status"], final.recorded) == ("final", False)
            # a late revision: the next final statement supersedes it, on PostgreSQL too
            day = next(
                w for w in case.windows
                if w["subject"] == "microsoft" and w["window"]["size"] == "1d"
                and w["window"]["start"].startswith("2022-06")
            )  # fmt: skip
            late = {
                **day,
                "id": "e" * 32,
                "revision": day["revision"] + 5,
                "calls": day["calls"] + 1,
            }
            store_records(postgres, [late], first_offset=10**6, ingest_ms=last + 60_000)
            after = issue(postgres, case.policy, year, SHORT)
            assert after.doc["supersedes"] == final.id
            assert after.doc["totals"]["calls"] == final.doc["totals"]["calls"] + 1
            request, rules = rebuild_request(final.doc)
            assert issue(postgres, case.policy, request, rules, record=False).body == final.body
            check = verify_statement(final.body, db=postgres, policy=case.policy)
            assert check.ok, check.lines
        finally:
            postgres.close()
            sqlite.close()

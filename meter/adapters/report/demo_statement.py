"""The statement `meter demo` ends with: the year 2022 of one organisation, as JSON and HTML."""

from __future__ import annotations

from pathlib import Path

from meter.adapters.policy_file import read_policy
from meter.adapters.report.outputs import write_outputs
from meter.adapters.report.service import issue
from meter.adapters.report.source import StatementRequest
from meter.adapters.store.database import open_database
from meter.core.policy import Policy
from meter.core.statement import Rules

__all__ = ["YEAR_2022", "write_demo_statement"]

YEAR_2022 = (1_640_995_200_000, 1_672_531_200_000)
"""2022-01-01T00:00:00Z and 2023-01-01T00:00:00Z."""


def write_demo_statement(
    database_url: str,
    policy: Policy | Path | str,
    org: str,
    out_dir: Path,
    *,
    rules: Rules | None = None,
) -> tuple[Path, Path, str]:
    """Issue the organisation's 2022 statement from the store (recorded in its register) and
    write it to `out_dir`: (JSON path, HTML path, its id: the SHA-256 of the JSON)."""
    loaded = policy if isinstance(policy, Policy) else read_policy(policy)
    db = open_database(database_url, timeout_s=10.0)
    try:
        issued = issue(db, loaded, StatementRequest(org, *YEAR_2022), rules or Rules())
    finally:
        db.close()
    written = dict(write_outputs(issued.doc, issued.body, issued.id, ["html"], out_dir))
    return written["json"], written["html"], issued.id

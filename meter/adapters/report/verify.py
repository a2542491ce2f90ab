"""`meter report verify`: is a statement file intact (canonical JSON, the id expected, a valid
signature), and does the usage store still give the same statement (the first section that
differs, if not)?"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from meter.adapters.report.service import issue, rebuild_request
from meter.adapters.report.signing import SigningKey, verify
from meter.adapters.store.database import Database
from meter.core.policy import Policy
from meter.core.statement import StatementError, first_difference, parse_statement, statement_id

__all__ = ["Verification", "default_signature", "verify_statement"]


_NAMED_ID = re.compile(r"-([0-9a-f]{12})\.json$")
"""The end of a statement's file name: the first 12 hex digits of its id."""


@dataclass
class Verification:
    ok: bool = True
    lines: list[str] = field(default_factory=list)
    anchored: bool = False
    """Something said which id the statement must have (a name, --id, a signature, the store)."""

    def good(self, line: str, *, anchor: bool = True) -> None:
        self.anchored = self.anchored or anchor
        self.lines.append(f"OK    {line}")

    def bad(self, line: str) -> None:
        self.ok = False
        self.lines.append(f"FAIL  {line}")

    def note(self, line: str) -> None:
        self.lines.append(f"      {line}")


def default_signature(path: Path) -> Path:
    """`x.json` -> `x.sig.json`."""
    name = path.name.removesuffix(".json")
    return path.with_name(f"{name}.sig.json")


def verify_statement(
    body: bytes,
    *,
    signature: bytes | None = None,
    key: SigningKey | None = None,
    expected_id: str | None = None,
    db: Database | None = None,
    policy: Policy | None = None,
    name: str | None = None,
) -> Verification:
    """Check `body` against what is given: the id its file `name` ends with, `expected_id`, a
    `signature` (with `key`), and the statement rebuilt from `db` with `policy`."""
    result = Verification()
    sid = statement_id(body)
    try:
        doc = parse_statement(body)
    except StatementError as exc:
        result.bad(exc.message)
        return result
    org, period = doc["org"], doc["period"]
    result.note(
        f"statement of {org['id']} from {period['from']} to {period['to']}, as of "
        f"{doc['as_of']}, {doc['status']}"
    )
    result.good(f"canonical JSON (RFC 8785); sha256 {sid}", anchor=False)
    named = _NAMED_ID.search(name or "")
    if named is not None:
        if sid.startswith(named.group(1)):
            result.good(f"the id its file name gives ({named.group(1)}...)")
        else:
            result.bad(f"its file name gives id {named.group(1)}...: the file was changed")
    if expected_id is not None:
        if expected_id.lower() == sid:
            result.good("the id expected")
        else:
            result.bad(f"the id expected is {expected_id}: the file was changed")
    if signature is None:
        result.note("not signed (no signature file)")
    else:
        check = verify(body, signature, key)
        (result.good if check.ok else result.bad)(f"signature: {check.message}")
    if db is None or policy is None:
        result.note("not rebuilt from the store (give --database and --policy to do so)")
        return result
    request, rules = rebuild_request(doc)
    try:
        again = issue(db, policy, request, rules, record=False)
    except StatementError as exc:
        result.bad(f"cannot rebuild it from the store: {exc}")
        return result
    if again.id == sid:
        result.good("rebuilt from the store as of its cut: identical, byte for byte")
        return result
    diff = first_difference(doc, again.doc)
    where = diff.describe("file", "store") if diff is not None else "the bytes differ"
    result.bad(f"rebuilt from the store: differs, first in section {where}")
    return result


def read_optional(path: Path | None) -> bytes | None:
    return None if path is None or not path.exists() else path.read_bytes()

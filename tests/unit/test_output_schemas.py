"""Every record the ledger emits matches its published JSON Schema (`schemas/`): alerts, window
totals (final, amended, after compaction) and the quota feed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from meter.core.ledger import Pending
from meter.core.outputs import ALERTS, QUOTA, WINDOWS
from meter.core.policy import load_policy
from tests.harness.ledger import DAY, MIN, POLICY, JsonStore, ev, new_ledger, progress, run

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def emitted() -> list[Pending]:
    """A ledger's outputs through alerts, a close, a late amendment and one after compaction."""
    ledger = new_ledger(
        load_policy(POLICY), JsonStore(), late_horizon_ms=30 * MIN, unknown_app_alerts=1
    )
    out: list[Pending] = []
    out += run(ledger, 0, [ev(f"e{i}", 1, records=12, status=200) for i in range(10)]).outbox
    out += run(ledger, 1, [ev("g", 2, "g1", recipient="government")]).outbox
    out += run(ledger, 2, [ev("u", 3, "ghost"), ev("u2", 3, "ghost2")]).outbox  # and a flood
    out += progress(ledger, 3, 20).outbox  # closes the first 15 minutes
    out += run(ledger, 4, [ev("late", 4, endpoint="/search")]).outbox
    out += progress(ledger, 5, 2 * 60).outbox  # compacts them
    out += run(ledger, 6, [ev("later", 5)]).outbox
    out += progress(ledger, 7, DAY // MIN).outbox
    return out


@pytest.mark.parametrize(
    ("kind", "schema"),
    [
        (ALERTS, "alert.schema.json"),
        (WINDOWS, "window.schema.json"),
        (QUOTA, "quota-state.schema.json"),
    ],
)
def test_every_emitted_record_matches_its_schema(kind: str, schema: str) -> None:
    check = validator(schema)
    values: list[Any] = [p.record.value for p in emitted() if p.record.kind == kind]
    assert len(values) >= 3
    if kind == ALERTS:
        assert {v["kind"] for v in values} >= {"cap", "unknown_app", "unknown_app_flood"}
    for value in values:
        errors = sorted(check.iter_errors(value), key=str)
        assert not errors, f"{value}\n{errors[0]}"


def test_the_schemas_reject_what_the_meter_never_sends() -> None:
    quota = next(p.record.value for p in emitted() if p.record.kind == QUOTA)
    check = validator("quota-state.schema.json")
    assert not check.is_valid({**quota, "state": "throttled"})
    assert not check.is_valid({k: v for k, v in quota.items() if k != "reset_at"})
    assert not check.is_valid({**quota, "reset_at": "tomorrow"})
    assert not check.is_valid({**quota, "surprise": 1})
    assert not check.is_valid({**quota, "seq": None})  # null only in the API's view

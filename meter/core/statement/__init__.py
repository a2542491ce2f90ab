"""Usage statements: an organisation's usage over a period, built from the usage store's window
totals and alerts, as canonical JSON (RFC 8785) whose SHA-256 is its id. Pure: no I/O."""

from meter.core.statement.build import FINAL, PROVISIONAL, build_statement, utilization
from meter.core.statement.canonical import (
    KIND,
    SECTIONS,
    Difference,
    canonical_bytes,
    content_digest,
    first_difference,
    parse_statement,
    statement_id,
)
from meter.core.statement.facts import (
    AlertFact,
    CapUse,
    Digest,
    Rules,
    StatementFacts,
    Volume,
    WindowFact,
)
from meter.core.statement.periods import (
    ContractMonth,
    MonthSlice,
    StatementError,
    check_period,
    contract_month,
    local_date,
    month_slices,
    parse_bound,
    zone,
)
from meter.core.statement.policy_doc import policy_digest, ratio_text

__all__ = [
    "FINAL",
    "KIND",
    "PROVISIONAL",
    "SECTIONS",
    "AlertFact",
    "CapUse",
    "ContractMonth",
    "Difference",
    "Digest",
    "MonthSlice",
    "Rules",
    "StatementError",
    "StatementFacts",
    "Volume",
    "WindowFact",
    "build_statement",
    "canonical_bytes",
    "check_period",
    "content_digest",
    "contract_month",
    "first_difference",
    "local_date",
    "month_slices",
    "parse_bound",
    "parse_statement",
    "policy_digest",
    "ratio_text",
    "statement_id",
    "utilization",
    "zone",
]

"""Issuing statements: collect the facts as of a cut, build the statement, name the final
statement it supersedes, sign it, and record it in the store's register."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from meter.adapters.report.settings import STATEMENT_KEY, StatementSettings
from meter.adapters.report.signing import SigningKey, load_key, sign
from meter.adapters.report.source import StatementRequest, collect
from meter.adapters.store.database import Database
from meter.adapters.store.statement_queries import (
    StoredStatement,
    record_statement,
    superseded_final,
)
from meter.core.durations import parse_duration
from meter.core.policy import Policy
from meter.core.statement import (
    Rules,
    StatementError,
    build_statement,
    canonical_bytes,
    content_digest,
    parse_bound,
    policy_digest,
    statement_id,
)

__all__ = [
    "GENERATOR",
    "Issued",
    "Issuer",
    "generator",
    "issue",
    "rebuild_request",
    "scope_digest",
]

GENERATOR = "meter"


def generator() -> tuple[str, str]:
    try:
        return GENERATOR, metadata.version("usage-meter")
    except metadata.PackageNotFoundError:
        return GENERATOR, "0+unknown"


@dataclass(frozen=True)
class Issuer:
    """How a server issues statements: the workers' horizons, and the key it signs with."""

    rules: Rules = field(default_factory=Rules)
    key: SigningKey | None = None

    @classmethod
    def load(cls, settings: StatementSettings, env: Mapping[str, str]) -> Issuer:
        key = None
        if settings.key is not None:
            key = load_key(settings.key, env, STATEMENT_KEY.label, private=True)
        return cls(settings.rules, key)


@dataclass(frozen=True)
class Issued:
    doc: dict[str, Any]
    body: bytes
    id: str
    signature: bytes | None
    recorded: bool
    """True when this call added it to the register (False: already there, or not asked)."""


def scope_digest(doc: dict[str, Any]) -> str:
    """What makes two statements statements of the same thing: organisation, period, zone and
    rules (a statement supersedes only one of its own scope)."""
    scope = {"org": doc["org"]["id"], "period": doc["period"], "rules": doc["rules"]}
    return hashlib.sha256(canonical_bytes(scope)).hexdigest()


def issue(
    db: Database,
    policy: Policy,
    request: StatementRequest,
    rules: Rules,
    *,
    key: SigningKey | None = None,
    record: bool = True,
    clock: Any = time.time,
) -> Issued:
    facts = collect(
        db, policy, request, rules, policy_sha256=policy_digest(policy), generator=generator()
    )
    doc = build_statement(facts)
    content = content_digest(doc)
    scope = scope_digest(doc)
    if facts.as_of_ms is not None:
        doc["supersedes"] = superseded_final(db, scope, facts.as_of_ms, content)
    body = canonical_bytes(doc)
    sid = statement_id(body)
    signature = None if key is None else sign(body, key)
    recorded = False
    if record:
        recorded = record_statement(
            db,
            StoredStatement(
                id=sid,
                org_id=request.org_id,
                period_from=request.from_ms,
                period_to=request.to_ms,
                tz=request.tz,
                scope_sha256=scope,
                content_sha256=content,
                as_of=facts.as_of_ms,
                status=str(doc["status"]),
                supersedes=doc["supersedes"],
                body=body,
                signature=signature,
                created_at=int(clock() * 1000),
            ),
        )
    return Issued(doc, body, sid, signature, recorded)


def rebuild_request(doc: dict[str, Any]) -> tuple[StatementRequest, Rules]:
    """The request and rules a statement was built with, to build it again."""
    try:
        period, rules = doc["period"], doc["rules"]
        tz = str(period["tz"])
        as_of = doc["as_of"]
        request = StatementRequest(
            org_id=str(doc["org"]["id"]),
            from_ms=parse_bound(period["from"], tz, "from"),
            to_ms=parse_bound(period["to"], tz, "to"),
            tz=tz,
            # None: the store held nothing then; -1 is before anything it holds now.
            as_of_ms=-1 if as_of is None else parse_bound(as_of, tz, "as_of"),
        )
        return request, Rules(
            grace_ms=parse_duration(rules["grace"]),
            late_horizon_ms=parse_duration(rules["late_horizon"]),
            history_horizon_ms=parse_duration(rules["history_horizon"]),
            top=int(rules["top_endpoints"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StatementError("statement", f"cannot read its parameters: {exc}") from None

"""The policy as a canonical document, and its digest: what a statement names to say which caps,
apps and rules it was judged against (the same policy in YAML or JSON, with other comments or
key order, has the same digest)."""

from __future__ import annotations

import hashlib
from typing import Any

from meter.core.policy import Cap, Policy
from meter.core.statement.canonical import canonical_bytes
from meter.core.windows import format_ms

__all__ = ["policy_digest", "policy_document", "ratio_text"]


def ratio_text(ratio: float) -> str:
    """A ratio as a decimal string (statements hold no floats): 0.8 -> "0.8", 1.0 -> "1"."""
    return format(ratio, ".6g")


def _cap(cap: Cap) -> dict[str, Any]:
    return {
        "key": cap.key,
        "level": cap.level,
        "metric": cap.metric,
        "window": cap.window.name,
        "limit": cap.limit,
        "thresholds": [{"at": ratio_text(t.ratio), "severity": t.severity} for t in cap.thresholds],
        "endpoints": None if cap.endpoints is None else sorted(cap.endpoints),
        "statuses": None if cap.statuses is None else [list(s) for s in cap.statuses],
        "enforcement": cap.enforcement,
    }


def policy_document(policy: Policy) -> dict[str, Any]:
    return {
        "tiers": {t.id: [_cap(c) for c in t.caps] for t in policy.tiers.values()},
        "orgs": {
            o.id: {
                "name": o.name,
                "government_notice": None
                if o.government_notice_ms is None
                else format_ms(o.government_notice_ms),
                "caps": [_cap(c) for c in o.caps],
            }
            for o in policy.orgs.values()
        },
        "apps": {
            a.id: {
                "org": a.org_id,
                "tier": a.tier,
                "name": a.name,
                "caps": [_cap(c) for c in a.caps],
            }
            for a in policy.apps.values()
        },
        "restricted_uses": [
            {"recipient": r.recipient, "requires": r.requires, "severity": r.severity}
            for r in policy.restricted_uses
        ],
    }


def policy_digest(policy: Policy) -> str:
    return hashlib.sha256(canonical_bytes(policy_document(policy))).hexdigest()

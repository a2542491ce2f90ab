"""A hand-built policy and sequence of sent items, for the simulator's truth and ledger tests."""

from __future__ import annotations

from typing import Any

from meter.core.policy import Policy, load_policy
from meter.sim.malformed import Malformed
from meter.sim.scenario import RETRY, Call, Item

T0 = 1_640_995_200_000  # 2022-01-01T00:00:00Z


MIN = 60_000


M15 = 15 * MIN


HOUR = 60 * MIN


POLICY: dict[str, Any] = {
    "tiers": {
        "std": {"caps": [{"id": "calls-15m", "metric": "calls", "window": "15m", "limit": 5}]}
    },
    "orgs": {
        "acme": {
            "name": "Acme",
            "caps": [
                {
                    "id": "records-1h",
                    "metric": "records",
                    "window": "1h",
                    "limit": 100,
                    "status": ["2xx"],
                    "thresholds": [0.5, 1.0],
                }
            ],
        },
        "gov-ok": {"name": "Notified", "government_notice": "2021-01-01"},
    },
    "apps": {
        "a1": {"org": "acme", "tier": "std"},
        "a2": {"org": "acme", "tier": "std"},
        "g1": {"org": "gov-ok", "tier": "std"},
    },
    "restricted_uses": [{"recipient": "government", "requires": "notice"}],
}


def policy() -> Policy:
    return load_policy(POLICY)


def sent(
    event_id: str,
    t: int,
    app: str,
    records: int = 0,
    *,
    status: int = 200,
    claim: str | None = None,
    recipient: str | None = None,
    flags: int = 0,
) -> Item:
    call = Call(event_id, t, app, claim, "/2/tweets", records, status, recipient, None)
    return Item(t, t, app, None, call, None, flags)


def sequence() -> list[Item]:
    e2 = sent("e2", T0 + 2 * MIN, "a1", 30)
    return [
        sent("e1", T0 + MIN, "a1", 30, claim="wrong-org"),  # the policy's org wins
        e2,
        e2._replace(send_ms=e2.send_ms + 5_000, flags=RETRY),  # a gateway retry
        sent("e3", T0 + 3 * MIN, "a2", 50, status=429),  # counted, but not by the 2xx cap
        sent("e4", T0 + 4 * MIN, "a1", 0, recipient="Government"),
        sent("e5", T0 + 5 * MIN, "a1", 10),
        sent("e6", T0 + 16 * MIN, "a1", 45),
        sent("e7", T0 + 20 * MIN, "ghost", 5, claim="acme"),  # unknown app, claims acme
        Item(T0 + 21 * MIN, T0 + 21 * MIN, "a1", "acme", None, Malformed(b"{", (), "not_json"), 0),
        sent("e8", T0 + 30 * MIN, "g1", 0, recipient="government"),  # allowed: a notice
        sent("e1", T0 + MIN, "a2", 1),  # the same id from another app is another call
    ]

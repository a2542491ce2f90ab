"""Who calls: one profile per app of the policy (plus a few apps the policy does not know), with
its own habits: which endpoints, whether it claims an org, sends users, or writes RFC 3339 times.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from meter.core.policy import Cap, Policy
from meter.core.windows import FixedWindow
from meter.sim.traffic import BurstTarget

TABLE_BITS = 6  # endpoint tables have 64 entries, indexed by random bits
APP_TABLE_BITS = 16  # the app table has 65,536 entries
ZIPF_EXPONENT = 1.1

# A realistic set of v2 endpoints and how common each is overall.
ENDPOINTS: tuple[tuple[str, float], ...] = (
    ("/2/tweets/search/recent", 40.0),
    ("/2/tweets", 18.0),
    ("/2/users/:id/tweets", 10.0),
    ("/2/tweets/search/all", 8.0),
    ("/2/tweets/:id", 6.0),
    ("/2/users/by", 6.0),
    ("/2/users/:id/mentions", 4.0),
    ("/2/tweets/:id/liking_users", 3.0),
    ("/2/tweets/counts/recent", 3.0),
    ("/2/tweets/sample/stream", 2.0),
)

# Apps the policy does not know, and the org each claims (None: no org_id at all).
UNKNOWN_APPS: tuple[tuple[str, str | None], ...] = (
    ("unregistered-scraper", None),
    ("shadow-analytics", "*first-org*"),
    ("partner-sandbox", "acme-research"),
)


@dataclass(frozen=True, slots=True)
class AppProfile:
    """The calling habits of one app. `org` is the org meter will count it under."""

    app_id: str
    known: bool
    claim: str | None
    org: str | None
    text_time: bool
    user_bits: int
    recipient: str | None
    watched: bool  # a restricted-use rule names the recipient
    endpoints: tuple[str, ...]

    def with_endpoint(self, endpoint: str) -> AppProfile:
        """The same app hitting one endpoint only (a burst)."""
        return AppProfile(
            self.app_id,
            self.known,
            self.claim,
            self.org,
            self.text_time,
            self.user_bits,
            self.recipient,
            self.watched,
            (endpoint,) * (1 << TABLE_BITS),
        )


def spread(weights: Sequence[float], bits: int) -> list[int]:
    """A table of 2**bits indices where index i appears in proportion to weights[i]."""
    size = 1 << bits
    whole = sum(weights)
    exact = [w * size / whole for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[: size - sum(counts)]:
        counts[i] += 1
    return [i for i, n in enumerate(counts) for _ in range(n)]


def _endpoint_table(rng: random.Random) -> tuple[str, ...]:
    weights = [w * rng.lognormvariate(0.0, 1.0) for _, w in ENDPOINTS]
    return tuple(ENDPOINTS[i][0] for i in spread(weights, TABLE_BITS))


def build_profiles(
    policy: Policy, rng: random.Random, unknown_share: float
) -> tuple[list[AppProfile], list[float]]:
    """The profiles of the policy's apps (in a seeded order of popularity, Zipf-weighted) and,
    if `unknown_share` > 0, of a few unknown apps sharing that fraction of the traffic."""
    known = sorted(policy.apps)
    rng.shuffle(known)
    first_org = min(policy.orgs) if policy.orgs else None
    ruled = {rule.recipient.casefold() for rule in policy.restricted_uses}
    profiles: list[AppProfile] = []
    for app_id in known:
        org = policy.apps[app_id].org_id
        style = rng.random()
        claim = None if style < 0.5 else (org if style < 0.9 else f"{org}-legacy")
        recipient = "commercial" if rng.random() < 0.2 else None
        profiles.append(
            AppProfile(
                app_id=app_id,
                known=True,
                claim=claim,
                org=policy.org_of(app_id, claim),
                text_time=rng.random() < 0.3,
                user_bits=rng.choice((0, 0, 10, 14, 16)),
                recipient=recipient,
                watched=recipient is not None and recipient.casefold() in ruled,
                endpoints=_endpoint_table(rng),
            )
        )
    weights = [1.0 / (rank + 1) ** ZIPF_EXPONENT for rank in range(len(profiles))]
    if unknown_share > 0 or not profiles:
        share = sum(weights) * unknown_share / max(1e-9, 1.0 - unknown_share)
        for app_id, claimed in UNKNOWN_APPS:
            claim = first_org if claimed == "*first-org*" else claimed
            profiles.append(
                AppProfile(
                    app_id=app_id,
                    known=False,
                    claim=claim,
                    org=policy.org_of(app_id, claim),
                    text_time=False,
                    user_bits=0,
                    recipient=None,
                    watched=False,
                    endpoints=_endpoint_table(rng),
                )
            )
            weights.append(share / len(UNKNOWN_APPS) if weights and share > 0 else 1.0)
    return profiles, weights


def _fixed_size(cap: Cap) -> int | None:
    window = cap.window
    return window.size_ms if isinstance(window, FixedWindow) else None


def _burst_endpoint(cap: Cap, profile: AppProfile) -> str | None:
    """An endpoint (and, implicitly, status 2xx) the cap counts, or None if none of ours do."""
    for endpoint in (profile.endpoints[0], *(e for e, _ in ENDPOINTS)):
        if cap.matches(endpoint, 200):
            return endpoint
    return None


def burst_targets(policy: Policy, profiles: Sequence[AppProfile]) -> list[list[BurstTarget]]:
    """Per profile, the app-level calls caps over fixed windows a burst can aim at."""
    out: list[list[BurstTarget]] = []
    for profile in profiles:
        targets: list[BurstTarget] = []
        for cap in policy.app_caps(profile.app_id):
            size = _fixed_size(cap)
            endpoint = _burst_endpoint(cap, profile)
            if cap.metric == "calls" and size is not None and endpoint is not None:
                targets.append(BurstTarget(cap.limit, size, endpoint))
        out.append(targets)
    return out

"""A seeded scenario of API-call traffic: every record to send, in send order (no I/O).

Send order is event time plus a delay: most calls are sent on time; some out of order by under a
minute (within the grace), some late by 20 minutes to 20 hours (amending closed windows, yet inside
the 1-day late horizon); gateway retries resend an event 0.5-90 s later (inside the 1-hour dedup
horizon). Calls that raise marker alerts (unknown app, restricted use) are never more than 30 s
late, so they arrive while meter still remembers that day's alert. A final "flush" event per
routing key (org, or app without org) moves every partition's watermark past every window.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from meter.core.durations import HOUR_MS
from meter.core.policy import Policy
from meter.sim.malformed import Malformed, make_malformed
from meter.sim.profiles import (
    APP_TABLE_BITS,
    TABLE_BITS,
    AppProfile,
    build_profiles,
    burst_targets,
    spread,
)
from meter.sim.timetext import TimeText
from meter.sim.traffic import Slot, allocate, hourly_weights, plan_bursts

CASE_CALLS_PER_YEAR = 780_000_000  # the 2022 case: 780M calls, 26B tweets
YEAR_MS = 365 * 86_400_000
START_2022 = 1_640_995_200_000  # 2022-01-01T00:00:00Z
START_2023 = 1_672_531_200_000  # 2023-01-01T00:00:00Z

RETRY, LATE, DISORDER, MARKER, FLUSH, BURST = 1, 2, 4, 8, 16, 32

DISORDER_MAX_MS = 50_000  # under the default 60 s grace: out of order, not late
MARKER_DISORDER_MAX_MS = 30_000
DEFAULT_CALLS = 100_000
"""Distinct calls `meter simulate` makes unless told otherwise."""
LATE_MIN_MS = 20 * 60_000
LATE_MAX_MS = 20 * HOUR_MS  # under the default 1-day late horizon
RETRY_MIN_MS, RETRY_MAX_MS = 500, 90_000  # well under the default 1-hour dedup horizon
FLUSH_MARGIN_MS = HOUR_MS  # the flush events are this far past the end of the last window

_ID_MULT = 0x9E3779B97F4A7C15  # odd: seq -> id is a bijection mod 2**64, so ids are unique
_MASK64 = (1 << 64) - 1
_SOURCE_BITS = 16
_SOURCE_MASK = (1 << _SOURCE_BITS) - 1
_BURST_BIT = 1 << (_SOURCE_BITS - 1)  # set on the sources of bursts
_PROFILE_MASK = _BURST_BIT - 1
_SERVER_ERRORS = (500, 502, 503, 504)


@dataclass(frozen=True)
class ScenarioConfig:
    """What to simulate. Shares are per distinct call (a retry, a malformed record...)."""

    seed: int = 7
    start_ms: int = START_2022
    end_ms: int = START_2023
    calls: int = 100_000
    mean_records: float = 33.0
    page_size: int = 100
    malformed: float = 0.001
    duplicates: float = 0.01
    late: float = 0.001
    disorder: float = 0.05
    burst_share: float = 0.25
    unknown_share: float = 0.005
    restricted: float = 0.0005
    throttled: float = 0.02
    server_errors: float = 0.005
    flush: bool = True

    def __post_init__(self) -> None:
        if self.end_ms <= self.start_ms:
            raise ValueError("the end must be after the start")
        if self.calls < 0:
            raise ValueError(f"calls must be >= 0, got {self.calls}")
        shares = ("malformed", "duplicates", "late", "disorder", "burst_share", "restricted")
        for name in (*shares, "throttled", "server_errors"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a share between 0 and 1")
        if not 0 <= self.unknown_share < 1:
            raise ValueError("unknown_share must be >= 0 and < 1")
        if self.late + self.disorder > 1 or self.throttled + self.server_errors >= 1:
            raise ValueError("late + disorder must be <= 1, throttled + server_errors < 1")
        most = self.page_size * (1 - self.throttled - self.server_errors)
        if self.page_size < 1 or not 0 <= self.mean_records <= most:
            raise ValueError(
                f"mean records must be between 0 and {most:g} (full pages of "
                f"{self.page_size}, errors return none)"
            )

    @staticmethod
    def calls_for_scale(scale: float, start_ms: int, end_ms: int) -> int:
        """Calls in [start, end) at `scale` times the 2022 case's 780 million calls a year."""
        return round(scale * CASE_CALLS_PER_YEAR * (end_ms - start_ms) / YEAR_MS)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Call(NamedTuple):
    """One API call as sent: `time` is epoch ms or RFC 3339 text, `org_id` the org claimed.

    Every string is from the policy's ids (A-Z a-z 0-9 . _ : -) or made here, so JSON can be
    written without escaping (see framing.call_json)."""

    id: str
    time: int | str
    app_id: str
    org_id: str | None
    endpoint: str
    records: int
    status: int
    recipient: str | None
    user_id: str | None

    def to_json(self) -> dict[str, object]:
        """The event's JSON object, as meter's event contract spells it."""
        return {k: v for k, v in zip(self._fields, self, strict=True) if v is not None}


class Item(NamedTuple):
    """One record to send. A valid event has `event`; a malformed record has `bad`.
    `org` is the org meter counts the app under; `flags` are RETRY, LATE..."""

    send_ms: int
    time_ms: int
    app_id: str
    org: str | None
    event: Call | None
    bad: Malformed | None
    flags: int


class RecordsMix:
    """Records per successful call: empty pages, full pages and partial pages, with the mean
    chosen so that the mean over all calls (errors return nothing) is `mean`."""

    def __init__(self, mean: float, page: int, error_share: float) -> None:
        ok_mean = min(float(page), mean / (1.0 - error_share))
        self.page = page
        self.empty = 1.0 if ok_mean <= 0 else 0.15 * (1.0 - ok_mean / page)
        partial = min(max(0.8 * ok_mean, 1.0), page / 2)
        full = (ok_mean - (1 - self.empty) * partial) / (page - partial) if ok_mean > 0 else 0.0
        self.full = max(0.0, full)
        if full < 0:  # a mean under about one record: mostly empty pages
            self.empty = 1.0 - ok_mean / partial
        if ok_mean >= page:
            self.empty, self.full = 0.0, 1.0
        # Partial pages are 1 + int((page - 1) * U**power): find the power giving that mean.
        low, high = 1e-6, 1e6
        for _ in range(200):
            mid = math.sqrt(low * high)
            low, high = (mid, high) if self.partial_mean(mid) > partial else (low, mid)
        self.power = math.sqrt(low * high)

    def partial_mean(self, power: float) -> float:
        """E[1 + int((page - 1) * U**power)] = 1 + sum over j of P(U >= (j / (page-1))**(1/k))."""
        top = self.page - 1
        return 1.0 + sum(1.0 - float((j / top) ** (1.0 / power)) for j in range(1, top))

    def expected_mean(self) -> float:
        """The mean records of a successful call."""
        partial = 1 - self.empty - self.full
        return self.full * self.page + partial * self.partial_mean(self.power)


def generate(policy: Policy, config: ScenarioConfig) -> Iterator[Item]:
    """Every record of the scenario, in send order; the same policy and config give the same
    records, byte for byte."""
    return _Generator(policy, config).run()


class _Generator:
    def __init__(self, policy: Policy, config: ScenarioConfig) -> None:
        self.policy = policy
        self.config = config
        self.rng = random.Random(config.seed)
        # Bursts are by known apps only (they aim at caps): unknown apps get their whole share
        # from the background traffic.
        background = 1.0 - config.burst_share
        unknown = min(0.5, config.unknown_share / background) if background > 0 else 0.0
        self.profiles, self.weights = build_profiles(policy, self.rng, unknown)
        self.app_table = spread(self.weights, APP_TABLE_BITS)
        bursty = [w if p.known else 0.0 for p, w in zip(self.profiles, self.weights, strict=True)]
        hours = hourly_weights(self.rng, config.start_ms, config.end_ms)
        bursts_total = round(config.calls * config.burst_share)
        counts = allocate(config.calls - bursts_total, [w for _, _, w in hours])
        self.slots = [Slot(lo, hi, n) for (lo, hi, _), n in zip(hours, counts, strict=True)]
        targets = burst_targets(policy, self.profiles)
        defaults = [p.endpoints[0] for p in self.profiles]
        if not any(bursty):
            bursty = self.weights
        self.bursts = plan_bursts(self.rng, bursts_total, hours, bursty, targets, defaults)
        self.mix = RecordsMix(
            config.mean_records, config.page_size, config.throttled + config.server_errors
        )
        self.salt = random.Random(config.seed ^ 0x5EED).getrandbits(64)
        self.routing: dict[str, AppProfile] = {}
        self.last_time = config.start_ms

    def run(self) -> Iterator[Item]:
        yield from self._events()
        if self.config.flush and self.routing:
            yield from self._flush()

    def _slot_codes(self, slot: Slot, active: list[int]) -> tuple[list[int], list[AppProfile]]:
        """The calls of one hour as sorted ints: time << 16 | source, and the sources."""
        rnd, bits, table = self.rng.random, self.rng.getrandbits, self.app_table
        lo, span = slot.start_ms, slot.end_ms - slot.start_ms
        codes = [
            ((lo + int(rnd() * span)) << _SOURCE_BITS) | table[bits(APP_TABLE_BITS)]
            for _ in range(slot.count)
        ]
        sources = list(self.profiles)
        for b in active:
            burst = self.bursts[b]
            n = burst.count_before(slot.end_ms) - burst.count_before(slot.start_ms)
            if n <= 0:
                continue
            blo = max(slot.start_ms, burst.start_ms)
            bspan = min(slot.end_ms, burst.end_ms) - blo
            if len(sources) >= _BURST_BIT:
                raise ValueError("too many apps and concurrent bursts to simulate")
            index = len(sources) | _BURST_BIT
            sources.append(self.profiles[burst.source].with_endpoint(burst.endpoint))
            codes.extend(((blo + int(rnd() * bspan)) << _SOURCE_BITS) | index for _ in range(n))
        codes.sort()
        return codes, sources

    def _events(self) -> Iterator[Item]:
        cfg, rng, mix, policy = self.config, self.rng, self.mix, self.policy
        rnd, bits = rng.random, rng.getrandbits
        text = TimeText()
        p_ok = 1.0 - cfg.throttled - cfg.server_errors
        p_429 = p_ok + cfg.throttled
        p_empty, p_full, page, power = mix.empty, mix.empty + mix.full, mix.page, mix.power
        partial_span = page - 1
        p_late, p_disorder = cfg.late, cfg.late + cfg.disorder
        p_dup, p_bad, p_gov = cfg.duplicates, cfg.malformed, cfg.restricted
        late_lo, late_ratio = math.log(LATE_MIN_MS), math.log(LATE_MAX_MS / LATE_MIN_MS)
        salt, routing = self.salt, self.routing
        heap: list[tuple[int, int, Item]] = []
        push, pop = heapq.heappush, heapq.heappop
        new = tuple.__new__  # Item(...) runs a Python-level __new__: a third of the time here
        seq = 0
        order = 0
        next_burst = 0
        active: list[int] = []
        for slot in self.slots:
            while next_burst < len(self.bursts) and self.bursts[next_burst].start_ms < slot.end_ms:
                active.append(next_burst)
                next_burst += 1
            codes, sources = self._slot_codes(slot, active)
            active = [b for b in active if self.bursts[b].end_ms > slot.end_ms]
            if codes:
                self.last_time = max(self.last_time, codes[-1] >> _SOURCE_BITS)
            for code in codes:
                t = code >> _SOURCE_BITS
                while heap and heap[0][0] <= t:
                    yield pop(heap)[2]
                src = code & _SOURCE_MASK
                p = sources[src & _PROFILE_MASK]
                flags = BURST if src & _BURST_BIT else 0
                seq += 1
                u = rnd()
                if u < p_ok:
                    status = 200
                    v = rnd()
                    if v < p_empty:
                        records = 0
                    elif v < p_full:
                        records = page
                    else:
                        records = 1 + int(partial_span * rnd() ** power)
                elif u < p_429:
                    status, records = 429, 0
                else:
                    status, records = _SERVER_ERRORS[bits(2)], 0
                recipient = p.recipient
                if p_gov and rnd() < p_gov:
                    recipient = "government" if bits(1) else "Government"
                    if policy.restricted_violation(p.org, recipient, t) is not None:
                        flags |= MARKER
                elif p.watched and policy.restricted_violation(p.org, recipient, t):
                    flags |= MARKER
                ev = new(
                    Call,
                    (
                        f"{(seq * _ID_MULT + salt) & _MASK64:016x}",
                        text(t) if p.text_time else t,
                        p.app_id,
                        p.claim,
                        p.endpoints[bits(TABLE_BITS)],
                        records,
                        status,
                        recipient,
                        f"u{bits(p.user_bits)}" if p.user_bits else None,
                    ),
                )
                if not p.known:
                    flags |= MARKER
                if p.app_id not in routing:
                    routing[p.app_id] = p
                send = t
                w = rnd()
                if w < p_disorder:
                    if flags & MARKER:
                        send = t + 100 + int(rnd() * (MARKER_DISORDER_MAX_MS - 100))
                        flags |= DISORDER
                    elif w < p_late:
                        send = t + int(math.exp(late_lo + rnd() * late_ratio))
                        flags |= LATE
                    else:
                        send = t + 100 + int(rnd() * (DISORDER_MAX_MS - 100))
                        flags |= DISORDER
                item = new(Item, (send, t, p.app_id, p.org, ev, None, flags))
                if send == t:
                    yield item
                else:
                    order += 1
                    push(heap, (send, order, item))
                if p_dup and not flags & LATE and rnd() < p_dup:
                    again = send
                    for _ in range(2 if rnd() < 0.1 else 1):
                        again += RETRY_MIN_MS + int(rnd() * (RETRY_MAX_MS - RETRY_MIN_MS))
                        order += 1
                        retry = new(Item, (again, t, p.app_id, p.org, ev, None, flags | RETRY))
                        push(heap, (again, order, retry))
                if p_bad and rnd() < p_bad:
                    bad = make_malformed(rng, p.app_id, t, f"{seq:x}")
                    yield Item(t, t, p.app_id, p.org, None, bad, 0)
        while heap:
            yield pop(heap)[2]

    def _flush(self) -> Iterator[Item]:
        """One event per routing key, far enough past the end that every window closes."""
        last = self.last_time
        ends = [spec.bucket(last).end_ms for spec in self.policy.windows]
        flush_ms = max([last + 1, *ends]) + FLUSH_MARGIN_MS
        keys: dict[str, AppProfile] = {}
        for profile in self.routing.values():
            key = f"org:{profile.org}" if profile.org is not None else f"app:{profile.app_id}"
            keys.setdefault(key, profile)
            if profile.org is not None and not profile.known:
                # meter counts an unknown app where its id routes and its org share where the
                # org routes: both partitions need their watermark moved.
                keys.setdefault(f"app:{profile.app_id}", profile)
        for n, key in enumerate(sorted(keys)):
            p = keys[key]
            flush_id = f"flush-{self.salt:016x}-{n}"
            ev = Call(flush_id, flush_ms, p.app_id, p.claim, "/2/tweets", 0, 200, None, None)
            flags = FLUSH | (0 if p.known else MARKER)
            yield Item(flush_ms, flush_ms, p.app_id, p.org, ev, None, flags)

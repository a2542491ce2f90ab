"""Delays between retries: exponential, capped, optionally jittered. The alert sinks use one per
sink; `KAFKA_RETRY` is how every Kafka call meter retries waits (the router's consumer, reads by
offset, the store's client calls)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry `attempt` (0 for the first retry): `base_s * factor**attempt`, at most
    `max_s`, minus up to `jitter` of it at random, so that failed deliveries spread out."""

    base_s: float
    max_s: float
    factor: float = 2.0
    jitter: float = 0.5

    def ceiling(self, attempt: int) -> float:
        return min(self.max_s, self.base_s * self.factor ** min(attempt, 64))

    def delay(
        self, attempt: int, rand: Callable[[], float], retry_after: float | None = None
    ) -> float:
        """The jittered delay; a receiver's `Retry-After` is honoured up to `max_s`."""
        chosen = self.ceiling(attempt) * (1.0 - self.jitter * rand())
        if retry_after is not None:
            chosen = max(chosen, min(retry_after, self.max_s))
        return chosen


KAFKA_RETRY = Backoff(0.5, 30.0)
"""0.5 s doubling to 30 s."""

__all__ = ["KAFKA_RETRY", "Backoff"]

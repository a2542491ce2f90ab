"""A small progress bar on stderr: throttled, one line redrawn in place, for TTYs (or on demand)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

_WIDTH = 24


class Progress:
    """Shows `done` of about `total` events, the rate and the time left; redraws at most every
    `interval` seconds. Disabled, it costs one comparison per update."""

    def __init__(
        self,
        total: int,
        stream: TextIO,
        *,
        enabled: bool,
        interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = max(1, total)
        self.stream = stream
        self.enabled = enabled
        self.interval = interval
        self.clock = clock
        self.start = clock()
        self.next_draw = self.start if enabled else float("inf")
        self.done = 0
        self.drawn = False

    def update(self, done: int) -> None:
        self.done = done
        if done >= 0 and self.clock() >= self.next_draw:
            self.draw()

    def draw(self) -> None:
        now = self.clock()
        self.next_draw = now + self.interval
        elapsed = max(now - self.start, 1e-9)
        share = min(1.0, self.done / self.total)
        filled = int(share * _WIDTH)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 and self.done < self.total else 0.0
        bar = "#" * filled + "." * (_WIDTH - filled)
        self.stream.write(
            f"\r[{bar}] {share:4.0%} {self.done:,} events {rate:,.0f}/s {left:,.0f}s left  "
        )
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        """Draw the final state and end the line (if anything was drawn)."""
        if self.enabled:
            self.draw()
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()

"""Why a sink could not deliver an alert. Every sink error descends from `SinkError`.

MeterError                 (meter.core.errors)
 +-- SinkError
      +-- RetryableError   the receiver may accept it later: network error, timeout, 5xx,
      |                    408, 429 (carries `retry_after` seconds when the receiver said)
      +-- PermanentError   the receiver will never accept it (other 4xx, 3xx, a malformed
                           alert): logged at ERROR, counted as rejected, skipped
"""

from __future__ import annotations

from meter.core.errors import MeterError


class SinkError(MeterError):
    """An alert was not delivered to a sink."""


class RetryableError(SinkError):
    """Delivery failed for a reason that may go away; try again after a backoff."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(SinkError):
    """Delivery can never succeed for this alert; retrying would block the sink forever."""


RETRYABLE_STATUSES = frozenset({408, 429})


def error_for_status(status: int, detail: str, retry_after: str | None = None) -> SinkError | None:
    """None for a 2xx answer, else the error an HTTP status means for delivery."""
    if 200 <= status < 300:
        return None
    message = f"HTTP {status}: {detail[:200]}" if detail else f"HTTP {status}"
    if status >= 500 or status in RETRYABLE_STATUSES:
        return RetryableError(message, parse_retry_after(retry_after))
    return PermanentError(message)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After: <seconds>` header; HTTP dates and garbage are ignored."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit():
        return None
    return float(text)

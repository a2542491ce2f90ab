"""The webhook sink: POST each alert's JSON, signed with HMAC-SHA256 over the exact body bytes.

A receiver checks `X-Meter-Signature: sha256=<hex>` by computing the HMAC of the raw request body
with the shared secret (compare in constant time), and deduplicates on `X-Meter-Alert-Id`.
"""

from __future__ import annotations

import hashlib
import hmac

import aiohttp

from meter.adapters.sinks.records import AlertRecord
from meter.adapters.sinks.transport import post_json

SIGNATURE_HEADER = "X-Meter-Signature"
ALERT_ID_HEADER = "X-Meter-Alert-Id"


def signature(body: bytes, secret: str) -> str:
    """The `X-Meter-Signature` value for `body`: "sha256=" and the hex HMAC-SHA256."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(body: bytes, secret: str, header: str) -> bool:
    """What a receiver does: True when `header` is the signature of `body` with `secret`."""
    return hmac.compare_digest(signature(body, secret), header)


def webhook_headers(alert: AlertRecord, secret: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature(alert.body, secret),
        ALERT_ID_HEADER: alert.id,
    }


class WebhookSink:
    """Sends the alert value exactly as published on the alerts topic (the same bytes)."""

    name = "webhook"

    def __init__(
        self, session: aiohttp.ClientSession, url: str, secret: str, timeout_s: float
    ) -> None:
        self.session = session
        self.url = url
        self.secret = secret
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"WebhookSink(url={self.url!r}, secret='***')"

    async def deliver(self, alert: AlertRecord) -> None:
        await post_json(
            self.session, self.url, alert.body, webhook_headers(alert, self.secret), self.timeout_s
        )

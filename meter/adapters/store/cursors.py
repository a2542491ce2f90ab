"""Opaque page cursors: the last row's sort key, tied to the query it came from (a cursor used
with another query, or after the top groups changed, is refused naming `cursor`)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import asdict
from typing import Any

from meter.adapters.store.buckets import QueryError


def _fingerprint(query: Any) -> str:
    fields = {k: v for k, v in asdict(query).items() if k not in {"cursor", "limit"}}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def encode_cursor(query: Any, key: list[Any], extra: str = "") -> str:
    """A cursor continuing `query` after the row whose sort key is `key`; `extra` pins what
    else must not change between pages."""
    body = json.dumps({"q": _fingerprint(query), "k": key, "x": extra}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode_cursor(query: Any, extra: str = "") -> list[Any] | None:
    """The sort key in `query.cursor` (None without one); QueryError when it is not valid here."""
    if query.cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(query.cursor + "=" * (-len(query.cursor) % 4))
        body = json.loads(text)
        key, fingerprint, seen = body["k"], body["q"], body["x"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise QueryError("cursor", "not a cursor this API returned") from None
    if fingerprint != _fingerprint(query) or not isinstance(key, list):
        raise QueryError("cursor", "belongs to another query: repeat the query it came from")
    if seen != extra:
        raise QueryError("cursor", "the top groups changed since the first page (new data): "
                         "start again without a cursor")  # fmt: skip
    return key

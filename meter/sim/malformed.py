"""Malformed input records, each of which meter must reject with exactly one known reason."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Malformed:
    """A record value (and headers) that decodes to one rejection with reason `reason`."""

    value: bytes
    headers: Headers
    reason: str


def _dump(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def make_malformed(rng: random.Random, app_id: str, time_ms: int, tag: str) -> Malformed:
    """One malformed record in the style of a gateway bug; `tag` makes its id unique."""
    good: dict[str, object] = {
        "id": f"bad-{tag}",
        "time": time_ms,
        "app_id": app_id,
        "endpoint": "/2/tweets/search/recent",
        "records": 10,
    }
    kind = rng.randrange(12)
    if kind == 0:
        return Malformed(_dump(good)[: rng.randint(5, 30)], (), "not_json")
    if kind == 1:
        return Malformed(b"\xff\xfe" + _dump(good)[2:], (), "not_utf8")
    if kind == 2:
        return Malformed(_dump({k: v for k, v in good.items() if k != "id"}), (), "missing_field")
    if kind == 3:
        good["time"] = rng.choice(("2022-13-45T25:61:00Z", "yesterday", "2022-03-01 12:00:00"))
        return Malformed(_dump(good), (), "bad_time")
    if kind == 4:
        good["records"] = -rng.randint(1, 100)
        return Malformed(_dump(good), (), "bad_field")
    if kind == 5:
        good["status"] = rng.choice((0, 99, 600, 999))
        return Malformed(_dump(good), (), "bad_field")
    if kind == 6:
        return Malformed(rng.choice((b'"ok"', b"42", b"null", b"true")), (), "wrong_type")
    if kind == 7:
        return Malformed(rng.choice((b"", b"  \n")), (), "empty")
    if kind == 8:
        good["id"] = "x" * 200
        return Malformed(_dump(good), (), "too_long")
    if kind == 9:
        return Malformed(b"[]", (), "empty_batch")
    if kind == 10:
        ce = {
            "specversion": "0.3",
            "id": f"bad-{tag}",
            "source": "/gateway",
            "type": "com.example.api.call",
            "data": good,
        }
        return Malformed(_dump(ce), (), "bad_cloudevent")
    headers: Headers = (
        ("ce_specversion", b"1.0"),
        ("ce_source", b"/gateway"),
        ("ce_type", b"com.example.api.call"),
    )  # no ce_id
    return Malformed(_dump({"records": 3}), headers, "bad_cloudevent")

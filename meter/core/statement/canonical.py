"""Statements as bytes: canonical JSON (RFC 8785), the id (SHA-256 of those bytes), the digest of
the figures alone (for supersession), and the first difference between two statements."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import rfc8785

from meter.core.statement.periods import StatementError

__all__ = [
    "KIND",
    "SECTIONS",
    "VERSION",
    "Difference",
    "canonical_bytes",
    "content_digest",
    "first_difference",
    "parse_statement",
    "statement_id",
]

KIND = "meter.usage-statement"
VERSION = 1
SECTIONS = (
    "kind",
    "version",
    "org",
    "period",
    "rules",
    "as_of",
    "status",
    "final_after",
    "supersedes",
    "policy",
    "generator",
    "apps",
    "totals",
    "by_app",
    "by_month",
    "by_app_month",
    "by_endpoint",
    "caps_crossed",
    "restricted_use",
    "data_quality",
    "inputs",
)
"""Every key of a statement, in the order people read them (and differences are looked for)."""
VOLATILE = ("as_of", "status", "supersedes", "generator")
"""What changes with the cut or the program, not with the figures."""
VOLATILE_QUALITY = ("event_time_seen", "provisional_windows")


def canonical_bytes(doc: Mapping[str, Any]) -> bytes:
    """RFC 8785: sorted keys, no whitespace, UTF-8, ECMAScript numbers (statements hold integers
    and strings only, so the bytes never depend on float formatting)."""
    return rfc8785.dumps(doc)


def statement_id(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def content_digest(doc: Mapping[str, Any]) -> str:
    """SHA-256 of the statement without what depends on the cut alone: two statements of one
    scope with the same figures and inputs have the same content digest."""
    figures = {k: v for k, v in doc.items() if k not in VOLATILE}
    quality = figures.get("data_quality")
    if isinstance(quality, Mapping):
        figures["data_quality"] = {k: v for k, v in quality.items() if k not in VOLATILE_QUALITY}
    return statement_id(canonical_bytes(figures))


def parse_statement(body: bytes) -> dict[str, Any]:
    """The statement in `body`, which must be its own canonical form (a changed byte anywhere,
    even whitespace, is refused)."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StatementError("statement", f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise StatementError("statement", f"not a usage statement (kind {KIND!r})")
    if doc.get("version") != VERSION:
        raise StatementError("statement", f"unsupported version {doc.get('version')!r}")
    try:
        again = canonical_bytes(doc)
    except rfc8785.CanonicalizationError as exc:
        raise StatementError("statement", f"cannot be canonical JSON: {exc}") from None
    if again != body:
        raise StatementError("statement", "not in canonical form (RFC 8785): it was edited")
    return doc


class Difference(tuple[str, str, Any, Any]):
    """(section, path inside it, left value, right value)."""

    __slots__ = ()

    @property
    def section(self) -> str:
        return self[0]

    def describe(self, left: str = "left", right: str = "right") -> str:
        section, path, a, b = self
        where = f"{section}{path}"
        return f"{where}: {left} {_short(a)}, {right} {_short(b)}"


def _short(value: Any) -> str:
    text = "(absent)" if value is _MISSING else json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


_MISSING: Any = object()


def _label(item: Any, index: int) -> str:
    """A list item's name in a path: its month, app, endpoint... when it has one."""
    if isinstance(item, Mapping):
        names = [
            str(item[k])
            for k in ("month", "date", "app", "endpoint", "recipient", "id")
            if isinstance(item.get(k), str)
        ]
        if names:
            return "[" + ",".join(names) + "]"
    return f"[{index}]"


def _first(a: Any, b: Any, path: str) -> tuple[str, Any, Any] | None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b)):
            found = _first(a.get(key, _MISSING), b.get(key, _MISSING), f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            found = _first(x, y, path + _label(x, i))
            if found is not None:
                return found
        if len(a) != len(b):
            return (f"{path} (length)", len(a), len(b))
        return None
    if type(a) is not type(b) or a != b:
        return (path, a, b)
    return None


def first_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> Difference | None:
    """The first section (in `SECTIONS` order, then any other key) where `a` and `b` differ,
    with the path and values of the first differing value in it; None when equal."""
    order = list(SECTIONS) + sorted((set(a) | set(b)) - set(SECTIONS))
    for section in order:
        found = _first(a.get(section, _MISSING), b.get(section, _MISSING), "")
        if found is not None:
            return Difference((section, *found))
    return None

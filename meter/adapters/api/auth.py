"""Bearer tokens of `meter api`: an admin scope that sees everything, and read-only scopes of one
organisation (`org:<id>`) that see nothing of any other.

The tokens file holds names, scopes and SHA-256 digests, never tokens:

    tokens:
      - {name: ops, scope: admin, sha256: 5e88...}
      - {name: microsoft-portal, scope: "org:microsoft", sha256: 9f86...}

`meter api token --scope org:microsoft --name microsoft-portal` makes a token, prints it once
and prints the line to add. A token is never logged, echoed in an error or kept in memory beyond
its digest.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from meter.core.errors import ConfigError

ADMIN = "admin"
TOKEN_PREFIX = "mtr_"  # noqa: S105 - a prefix, so a leaked token is recognisable


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: `org` is None for the admin scope (and when no tokens are configured)."""

    name: str
    org: str | None

    def sees_org(self, org_id: str | None) -> bool:
        return self.org is None or org_id == self.org


OPEN = Principal("anonymous", None)
"""Everyone, when the API runs without a tokens file (only allowed on a loopback address)."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_scope(scope: object, where: str) -> str | None:
    """The organisation of a scope (None: admin)."""
    if scope == ADMIN:
        return None
    if isinstance(scope, str) and scope.startswith("org:") and len(scope) > 4:
        return scope[4:]
    raise ConfigError(where, f"scope must be 'admin' or 'org:<org id>', got {scope!r}")


class Tokens:
    """The configured tokens, by digest."""

    def __init__(self, entries: Mapping[str, Principal]) -> None:
        self._by_digest = dict(entries)

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def load(cls, path: Path, label: str) -> Tokens:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(label, f"cannot read {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(label, f"{path} is not valid YAML: {exc}") from exc
        items = doc.get("tokens") if isinstance(doc, Mapping) else None
        if not isinstance(items, list) or not items:
            raise ConfigError(label, f"{path} needs a non-empty 'tokens' list")
        entries: dict[str, Principal] = {}
        for i, item in enumerate(items):
            where = f"{path}: tokens[{i}]"
            if not isinstance(item, Mapping):
                raise ConfigError(where, "must be a mapping with name, scope and sha256")
            name, sha = item.get("name"), item.get("sha256")
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{where}.name", "must be a non-empty string")
            if not isinstance(sha, str) or len(sha) != 64 or not _is_hex(sha):
                raise ConfigError(
                    f"{where}.sha256",
                    "must be the 64 hex digits of the token's SHA-256 (`meter api token`)",
                )
            entries[sha.lower()] = Principal(name, parse_scope(item.get("scope"), f"{where}.scope"))
        return cls(entries)

    def principal(self, authorization: str | None) -> Principal | None:
        """The principal of an `Authorization: Bearer <token>` header, or None."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        given = digest(authorization[7:].strip())
        found = None
        for known, principal in self._by_digest.items():
            if hmac.compare_digest(known, given):
                found = principal
        return found


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True

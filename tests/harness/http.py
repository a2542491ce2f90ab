"""A small HTTP client for tests of `meter api`: status, headers and body of one GET."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

from meter.adapters.api.auth import digest


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get_content_type()


def get(
    port: int,
    path: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    """GET http://127.0.0.1:<port><path>; a refused connection is status 0."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.headers, e.read())
    except (urllib.error.URLError, ConnectionError):
        return Reply(0, Message(), b"")


def write_tokens(path: Path, suffix: str) -> tuple[str, str]:
    """A tokens file with an admin token and a read-only token for org `acme`; returns both
    tokens (the file holds only their digests)."""
    admin, acme = f"mtr_admin_{suffix}", f"mtr_acme_{suffix}"
    path.write_text(
        "tokens:\n"
        f"  - {{name: ops, scope: admin, sha256: {digest(admin)}}}\n"
        f'  - {{name: acme-portal, scope: "org:acme", sha256: {digest(acme)}}}\n'
    )
    return admin, acme

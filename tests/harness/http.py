"""A small HTTP client for tests of `meter api`: status, headers and body of one GET."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any


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

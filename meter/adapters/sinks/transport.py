"""One HTTP POST of a JSON body, its outcome mapped onto the sink error tree."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from meter.adapters.sinks.errors import RetryableError, error_for_status


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout_s: float,
) -> None:
    """POST `body`; return on 2xx, raise `RetryableError` or `PermanentError` otherwise.

    Redirects are not followed: a POST redirected is a misconfigured URL, not a delivery."""
    try:
        async with session.post(
            url,
            data=body,
            headers={"Content-Type": "application/json", **headers},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as response:
            detail = (await response.read()).decode(errors="replace").strip()
            status = response.status
            retry_after = response.headers.get("Retry-After")
    except TimeoutError as exc:
        raise RetryableError(f"no answer within {timeout_s:g}s") from exc
    except aiohttp.ClientError as exc:
        raise RetryableError(f"{type(exc).__name__}: {exc}") from exc
    error = error_for_status(status, detail, retry_after)
    if error is not None:
        raise error

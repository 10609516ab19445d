"""Calling a paid HTTP API (an LLM, an image model) from a handler: what its answers mean for the job.

429 (and 503 with Retry-After) is the provider asking us to slow down: `RateLimited`, a deferral
that is not counted as an attempt. 5xx, timeouts and connection errors are ordinary failures,
retried with backoff. 400/401/403/404/422 are `Permanent`: the request or the key is wrong, and
paying for the same call again cannot fix it. A 2xx that is not the JSON object promised is a
`ProviderError` (retried: providers do return garbage now and then).
"""

from __future__ import annotations

from typing import Any

import httpx

from worker import Permanent, RateLimited

PERMANENT_STATUS = frozenset({400, 401, 403, 404, 405, 413, 422})


class ProviderError(RuntimeError):
    """The provider answered, but not with what its API promises."""


async def post_json(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], *, api_key: str | None, what: str
) -> dict[str, Any]:
    """POST `body` as JSON with a bearer key; the JSON object answered, or the error it means."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = await client.post(url, json=body, headers=headers)
    if response.status_code == 429 or (response.status_code == 503 and "retry-after" in response.headers):
        raise RateLimited.from_response(response, f"{what}: HTTP {response.status_code}")
    if response.status_code in PERMANENT_STATUS:
        raise Permanent(f"{what}: HTTP {response.status_code}: {_excerpt(response)}")
    if response.status_code >= 300:
        raise ProviderError(f"{what}: HTTP {response.status_code}: {_excerpt(response)}")
    try:
        data = response.json()
    except ValueError as exc:
        raise ProviderError(f"{what}: the answer is not JSON: {_excerpt(response)}") from exc
    if not isinstance(data, dict):
        raise ProviderError(f"{what}: the answer is not a JSON object: {_excerpt(response)}")
    return data


def _excerpt(response: httpx.Response, limit: int = 300) -> str:
    text = " ".join(response.text.split())
    return text[:limit] + ("..." if len(text) > limit else "")

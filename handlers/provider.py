"""Calling a paid HTTP API (an LLM, an image model) from a handler: what its answers mean for the job.

429 (and 503 with Retry-After) is the provider asking us to slow down: `RateLimited`, a deferral
that is not counted as an attempt. 5xx, timeouts and connection errors are ordinary failures,
retried with backoff. 400/401/403/404/422 are `Permanent`: the request or the key is wrong, and
paying for the same call again cannot fix it. A 2xx that is not the JSON object promised is a
`ProviderError` (retried: providers do return garbage now and then).

The key never reaches an error (and so never the job row, the dead-letter record or the log):
answers are quoted with it masked (some providers echo the key they refused), and a transport
error is raised again as the same type with its message masked and without its cause.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from db.redact import redact
from worker import Permanent, RateLimited

KEY_PARAM = re.compile(r"key|token|secret|sig|password", re.IGNORECASE)
PERMANENT_STATUS = frozenset({400, 401, 403, 404, 405, 413, 422})


class ProviderError(RuntimeError):
    """The provider answered, but not with what its API promises."""


async def post_json(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], *, api_key: str | None, what: str
) -> dict[str, Any]:
    """POST `body` as JSON with a bearer key; the JSON object answered, or the error it means."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    secrets = _secrets(url, api_key)
    try:
        response = await client.post(url, json=body, headers=headers)
    except httpx.RequestError as exc:
        # The same error (a timeout stays a timeout), masked, without the chain of httpcore errors.
        raise type(exc)(f"{what}: {redact(str(exc), secrets)}", request=exc.request) from None
    if response.status_code == 429 or (response.status_code == 503 and "retry-after" in response.headers):
        raise RateLimited.from_response(response, f"{what}: HTTP {response.status_code}")
    if response.status_code in PERMANENT_STATUS:
        raise Permanent(f"{what}: HTTP {response.status_code}: {_excerpt(response, secrets)}")
    if response.status_code >= 300:
        raise ProviderError(f"{what}: HTTP {response.status_code}: {_excerpt(response, secrets)}")
    try:
        data = response.json()
    except ValueError:
        raise ProviderError(f"{what}: the answer is not JSON: {_excerpt(response, secrets)}") from None
    if not isinstance(data, dict):
        raise ProviderError(f"{what}: the answer is not a JSON object: {_excerpt(response, secrets)}")
    return data


def _secrets(url: str, api_key: str | None) -> tuple[str, ...]:
    """The key, and the values of key-like query parameters (some APIs take it as `?key=`)."""
    query = httpx.URL(url).params
    in_query = [value for name, value in query.multi_items() if KEY_PARAM.search(name)]
    return (*([api_key] if api_key else []), *in_query)


def _excerpt(response: httpx.Response, secrets: tuple[str, ...], limit: int = 300) -> str:
    text = redact(" ".join(response.text.split()), secrets)  # mask before cutting: a cut key would survive
    return text[:limit] + ("..." if len(text) > limit else "")

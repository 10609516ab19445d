"""What every answer of the web process carries, and what it refuses before any route runs.

One ASGI middleware (pure ASGI, so SSE streams pass through unbuffered and cancellation reaches
the route): security headers on every answer (a route may set its own policy first: the page does),
431/414 for oversized headers or query strings before anything decodes them, and one `http.request`
log line per request with the access token taken out of the query. It replaces uvicorn's access
log, which printed `?access_token=` in full.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterable
from typing import Final
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from db.logs import get_logger

log = get_logger()
MAX_AUTHORIZATION_BYTES: Final = 8 * 1024  # a Supabase access token is under 2 KB
MAX_HEADER_BYTES: Final = 32 * 1024  # all request headers together
MAX_URL_BYTES: Final = 16 * 1024  # path and query: ?access_token= and ?delay= need far less
SECRET_PARAMETERS: Final = frozenset({"access_token"})
REDACTED: Final = "[redacted]"
# The API answers JSON and files: nothing it serves may load anything, run in a frame or tell
# another site where the browser came from (the page's URLs may hold ?access_token=).
API_POLICY: Final = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HEADERS: Final = (
    ("content-security-policy", API_POLICY),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    ("cross-origin-opener-policy", "same-origin"),
)


def inline_hashes(html: str, tag: str) -> list[str]:
    """CSP source expressions ('sha256-...') for each inline <tag> element of `html`."""
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in found]


def page_policy(html: str) -> str:
    """The page's CSP: its own inline script and style (by hash), same-origin fetches and media."""
    scripts = " ".join(inline_hashes(html, "script"))
    styles = " ".join(inline_hashes(html, "style"))
    return (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self';"
        " img-src 'self' data:; media-src 'self'; frame-ancestors 'none'; base-uri 'none';"
        " form-action 'self'"
    )


def docs_policy(html: str) -> str:
    """Swagger UI's CSP: its CDN's files and its one inline script (by hash), nothing else."""
    cdn = "https://cdn.jsdelivr.net"
    return (
        f"default-src 'none'; script-src {cdn} {' '.join(inline_hashes(html, 'script'))};"
        f" style-src {cdn}; img-src https://fastapi.tiangolo.com data:; connect-src 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    )


def redact_query(query: bytes) -> str:
    """The query string with the value of each secret parameter replaced by [redacted]."""
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    return urlencode([(k, REDACTED if k in SECRET_PARAMETERS else v) for k, v in pairs], safe="[]")


class Guard:
    """Security headers, header and query size caps, and the redacted request log, for one app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse oversized requests, add the headers, log the request once it has been answered."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS:
                    headers.setdefault(name, value)
            await send(message)

        url_bytes = len(scope.get("raw_path") or scope["path"].encode()) + len(scope["query_string"])
        refusal = _oversized(scope["headers"], url_bytes)
        try:
            if refusal is not None:
                await refusal(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        finally:
            log.info(
                "http.request",
                method=scope["method"],
                path=scope["path"] if url_bytes <= MAX_URL_BYTES else "[too long]",
                query=redact_query(scope["query_string"]) if url_bytes <= MAX_URL_BYTES else "[too long]",
                status=status,
                client=scope["client"][0] if scope.get("client") else None,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )


def _oversized(headers: Iterable[tuple[bytes, bytes]], url_bytes: int) -> JSONResponse | None:
    total = 0
    for name, value in headers:
        total += len(name) + len(value)
        if name == b"authorization" and len(value) > MAX_AUTHORIZATION_BYTES:
            return _refuse(431, f"the Authorization header is over {MAX_AUTHORIZATION_BYTES} bytes")
    if total > MAX_HEADER_BYTES:
        return _refuse(431, f"the request headers are over {MAX_HEADER_BYTES} bytes")
    if url_bytes > MAX_URL_BYTES:
        return _refuse(414, f"the URL is over {MAX_URL_BYTES} bytes")
    return None


def _refuse(status: int, message: str) -> JSONResponse:
    code = "headers_too_large" if status == 431 else "uri_too_long"
    return JSONResponse({"error": {"code": code, "message": message}}, status)

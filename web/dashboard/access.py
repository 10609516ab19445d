"""Who may use the dashboard, and the CSRF check every action passes.

The dashboard shows every user's jobs, so it is never open by default. A request is admitted when
it carries the admin credential (web/auth.py `Caller.admin`: `PGMQ_WORKER_ADMIN_TOKEN`, or a
Supabase JWT whose role is `service_role`) as `Authorization: Bearer ...` or in the cookie the
login form sets; without a credential, only a loopback client is served (development), and every
page says so. Anyone else gets the login form (pages) or 401 (actions and streams).

Every action is a POST carrying a CSRF token (double submit: a random value in an HttpOnly,
SameSite=Strict cookie, echoed in a hidden field of each form), and a POST whose Origin (or
Sec-Fetch-Site) says it came from another site is refused whatever it carries.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs, urlsplit

from fastapi import Request
from fastapi.responses import Response

from web.auth import Auth
from web.errors import ApiError

SESSION_COOKIE: Final = "pgmq_worker_dashboard"
CSRF_COOKIE: Final = "pgmq_worker_csrf"
CSRF_FIELD: Final = "csrf"
PATH: Final = "/dashboard"
SESSION_MAX_AGE_S: Final = 12 * 3600
MAX_FORM_BYTES: Final = 16 * 1024


@dataclass(frozen=True, slots=True)
class Visitor:
    """An admitted request: admin (through `via`: bearer or cookie) or a loopback client without one."""

    admin: bool
    via: str  # "bearer", "cookie" or "loopback"

    @property
    def loopback_only(self) -> bool:
        """True when the visitor holds no credential (the banner says so)."""
        return not self.admin


class NotAdmitted(Exception):
    """The request holds no admin credential and does not come from loopback."""


def is_loopback_client(request: Request) -> bool:
    """True when the TCP peer is this machine (uvicorn resolves trusted proxy headers first)."""
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # no address, or a name (a test client): never loopback


def is_https(request: Request) -> bool:
    """The page was fetched over https (directly, or at a proxy that says so)."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


class Access:
    """The dashboard's gate: admits requests, logs in, and checks CSRF tokens."""

    def __init__(self, auth: Auth) -> None:
        self.auth = auth

    def admit(self, request: Request) -> Visitor:
        """The visitor; NotAdmitted without a credential off loopback, ApiError 401 for a bad one."""
        header = request.headers.get("authorization")
        if header:
            if self.auth.caller(header).admin:  # a bad token raises the API's 401
                return Visitor(True, "bearer")
            raise ApiError(403, "forbidden", "the dashboard needs the admin credential, not a user's token")
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie and self.is_admin_token(cookie):
            return Visitor(True, "cookie")
        if is_loopback_client(request):
            return Visitor(False, "loopback")
        raise NotAdmitted

    def is_admin_token(self, token: str) -> bool:
        """True for the admin token or a service_role JWT; False for anything else (never raises)."""
        try:
            return self.auth.caller(f"Bearer {token}").admin
        except ApiError:
            return False

    def session_age(self, token: str) -> int:
        """How long the login cookie may last: 12 h, or until the JWT expires if sooner."""
        expires = self.auth.caller(f"Bearer {token}").expires_at
        left = SESSION_MAX_AGE_S if expires is None else int(expires - time.time())
        return max(1, min(SESSION_MAX_AGE_S, left))

    def login_configured(self) -> bool:
        """Whether any credential could log in (an admin token, or a JWT secret for service_role)."""
        return self.auth.admin_enabled or self.auth.enabled


def csrf_token(request: Request) -> tuple[str, bool]:
    """The CSRF token this browser's forms carry, and whether it is new (its cookie must be set)."""
    cookie = request.cookies.get(CSRF_COOKIE)
    return (cookie, False) if cookie else (secrets.token_urlsafe(32), True)


def set_csrf_cookie(request: Request, response: Response, token: str) -> None:
    """The CSRF cookie: HttpOnly (the page never reads it: the form carries a copy), SameSite=Strict."""
    response.set_cookie(
        CSRF_COOKIE, token, path=PATH, httponly=True, samesite="strict", secure=is_https(request)
    )


def set_session(request: Request, response: Response, token: str, max_age: int) -> None:
    """The login cookie: the credential itself, HttpOnly, SameSite=Strict, Secure over https."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def clear_session(request: Request, response: Response) -> None:
    """Forget the login cookie."""
    response.delete_cookie(
        SESSION_COOKIE, path=PATH, httponly=True, samesite="strict", secure=is_https(request)
    )


def same_origin(request: Request) -> bool:
    """False when the browser says the POST came from another site.

    Sec-Fetch-Site, where the browser sends it (script cannot set it), decides; otherwise the
    Origin must name this host. Other clients send neither and pass (the CSRF token still counts).
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    return parts.netloc.lower() == host.lower() and parts.scheme in ("http", "https")


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body (first value of each field); ApiError 413/400 for an oversized or bad one."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise ApiError(413, "payload_too_large", f"a dashboard form is at most {MAX_FORM_BYTES} bytes")
    try:
        fields = parse_qs(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=50, strict_parsing=False
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "bad_request", "the form is not valid urlencoded UTF-8") from exc
    return {k: v[0] for k, v in fields.items()}


def check_csrf(request: Request, form: dict[str, str]) -> None:
    """ApiError 403 unless the POST is same-origin and its form echoes the CSRF cookie."""
    if not same_origin(request):
        raise ApiError(403, "cross_origin", "a dashboard action must come from the dashboard's own pages")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = form.get(CSRF_FIELD, "")
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise ApiError(403, "csrf_failed", "the form's CSRF token is missing or stale: reload the page")

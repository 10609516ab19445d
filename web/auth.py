"""Supabase access tokens: HS256 JWTs signed with the project's JWT secret; `sub` is the user id."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import jwt

from db.logs import get_logger
from web.errors import ApiError

log = get_logger()
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="pgmq-worker"'}
MAX_TOKEN_CHARS = 4096  # Supabase's access tokens are well under 2 KB; never decode megabytes
# One answer for every token that does not pass, whichever check refused it: telling an attacker
# "expired" or "audience doesn't match" confirms that the signature held. The reason is logged.
REFUSAL_MESSAGE = "invalid access token"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: their user id (None when auth is off) and when their token expires."""

    owner: UUID | None
    expires_at: float | None  # Unix time; None when auth is off
    admin: bool = False  # the admin credential (PGMQ_WORKER_ADMIN_TOKEN, a service_role JWT)


ANONYMOUS = Caller(None, None)


class Auth:
    """Turns an Authorization header (or an SSE `access_token` parameter) into the caller."""

    def __init__(self, secret: str | None, audience: str = "authenticated") -> None:
        self.secret = secret
        self.audience = audience

    @property
    def enabled(self) -> bool:
        """False: the endpoints are open and jobs have no owner."""
        return self.secret is not None

    def owner(self, authorization: str | None, access_token: str | None = None) -> UUID | None:
        """The caller's user id, None when auth is off; ApiError 401 for a missing or bad token."""
        return self.caller(authorization, access_token).owner

    def caller(self, authorization: str | None, access_token: str | None = None) -> Caller:
        """The caller (ANONYMOUS when auth is off); ApiError 401 for a missing or bad token."""
        if self.secret is None:
            return ANONYMOUS
        token = _bearer(authorization) if authorization else access_token
        if not token:
            raise ApiError(
                401, "unauthorized", "an access token is required (Authorization: Bearer ...)", CHALLENGE
            )
        if len(token) > MAX_TOKEN_CHARS:
            raise _refuse("token_too_long", f"{len(token)} characters")
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                audience=self.audience,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise _refuse(type(exc).__name__, str(exc)) from exc
        try:
            return Caller(UUID(str(claims["sub"])), float(claims["exp"]))
        except (ValueError, TypeError):
            raise _refuse("subject_not_a_user_id", "the token's subject is not a user id") from None


def _refuse(reason: str, detail: str) -> ApiError:
    """The uniform 401, after logging which check refused the token (never the token itself)."""
    log.info("auth.refused", reason=reason, detail=detail[:200])
    return ApiError(401, "unauthorized", REFUSAL_MESSAGE, CHALLENGE)


def _bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "the Authorization header must be 'Bearer <token>'", CHALLENGE)
    return token.strip()

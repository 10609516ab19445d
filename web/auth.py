"""Who is calling: a Supabase access token (HS256, `sub` is the user id) or the admin credential.

An admin is a caller holding `PGMQ_WORKER_ADMIN_TOKEN` as its bearer token, or a JWT signed with
the project's secret whose `role` claim is `service_role` (Supabase's service key): an admin may
act on every user's jobs (cancel, retry, the dashboard).
"""

from __future__ import annotations

import hmac
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
SERVICE_ROLE = "service_role"  # the `role` claim of Supabase's service key (it has no `sub`, no `aud`)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: their user id (None when auth is off), when their token expires, admin or not."""

    owner: UUID | None
    expires_at: float | None  # Unix time; None when auth is off or for the admin token
    admin: bool = False

    def may_see(self, owner: UUID | None, *, auth_enabled: bool) -> bool:
        """True when this caller may see (and act on) a job of `owner`."""
        return self.admin or not auth_enabled or owner == self.owner


ANONYMOUS = Caller(None, None)
ADMIN = Caller(None, None, admin=True)


class Auth:
    """Turns an Authorization header (or an SSE `access_token` parameter) into the caller."""

    def __init__(
        self, secret: str | None, audience: str = "authenticated", *, admin_token: str | None = None
    ) -> None:
        self.secret = secret
        self.audience = audience
        self._admin_token = None if admin_token is None else _raw(admin_token)

    @property
    def enabled(self) -> bool:
        """False: the endpoints are open and jobs have no owner."""
        return self.secret is not None

    def owner(self, authorization: str | None, access_token: str | None = None) -> UUID | None:
        """The caller's user id, None when auth is off; ApiError 401 for a missing or bad token."""
        return self.caller(authorization, access_token).owner

    @property
    def admin_enabled(self) -> bool:
        """True when an admin token is configured (a service_role JWT needs the JWT secret)."""
        return self._admin_token is not None

    def caller(self, authorization: str | None, access_token: str | None = None) -> Caller:
        """The caller (ANONYMOUS when auth is off, unless it holds the admin token); 401 for a bad token."""
        if self.secret is None:
            # Open endpoints: a token is not needed, and one that is not the admin's is ignored.
            scheme, _, sent = (authorization or "").partition(" ")
            lenient = sent.strip() if scheme.lower() == "bearer" else access_token
            return ADMIN if lenient and self._is_admin_token(lenient) else ANONYMOUS
        token = _bearer(authorization) if authorization else access_token
        if not token:
            raise ApiError(
                401, "unauthorized", "an access token is required (Authorization: Bearer ...)", CHALLENGE
            )
        if len(token) > MAX_TOKEN_CHARS:
            raise _refuse("token_too_long", f"{len(token)} characters")
        if self._is_admin_token(token):
            return ADMIN
        try:
            # The audience is checked below, for users only: the service key carries none.
            claims = jwt.decode(
                token, self.secret, algorithms=["HS256"], options={"require": ["exp"], "verify_aud": False}
            )
        except jwt.PyJWTError as exc:
            raise _refuse(type(exc).__name__, str(exc)) from exc
        if claims.get("role") == SERVICE_ROLE:
            return Caller(_user_id(claims.get("sub")), float(claims["exp"]), admin=True)
        if not _audience_matches(claims.get("aud"), self.audience):
            raise _refuse("InvalidAudienceError", "the audience does not match")
        if "sub" not in claims:
            raise _refuse("MissingRequiredClaimError", 'the token has no "sub" claim')
        owner = _user_id(claims["sub"])
        if owner is None:
            raise _refuse("subject_not_a_user_id", "the token's subject is not a user id")
        return Caller(owner, float(claims["exp"]))

    def _is_admin_token(self, token: str) -> bool:
        """Constant-time: how much of a guess matched must not show in the answer's timing."""
        return self._admin_token is not None and hmac.compare_digest(_raw(token), self._admin_token)


def _raw(token: str) -> bytes:
    return token.encode("utf-8", "surrogatepass")


def _user_id(sub: object) -> UUID | None:
    try:
        return None if sub is None else UUID(str(sub))
    except ValueError:
        return None


def _audience_matches(aud: object, expected: str) -> bool:
    """PyJWT's rule: `aud` is the expected string or a list holding it."""
    return aud == expected or (isinstance(aud, list) and expected in aud)


def _refuse(reason: str, detail: str) -> ApiError:
    """The uniform 401, after logging which check refused the token (never the token itself)."""
    log.info("auth.refused", reason=reason, detail=detail[:200])
    return ApiError(401, "unauthorized", REFUSAL_MESSAGE, CHALLENGE)


def _bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "the Authorization header must be 'Bearer <token>'", CHALLENGE)
    return token.strip()

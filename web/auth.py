"""Supabase access tokens: HS256 JWTs signed with the project's JWT secret; `sub` is the user id."""

from __future__ import annotations

from uuid import UUID

import jwt

from web.errors import ApiError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="pgmq-worker"'}


class Auth:
    """Turns an Authorization header (or an SSE `access_token` parameter) into an owner id."""

    def __init__(self, secret: str | None, audience: str = "authenticated") -> None:
        self.secret = secret
        self.audience = audience

    @property
    def enabled(self) -> bool:
        """False: the endpoints are open and jobs have no owner."""
        return self.secret is not None

    def owner(self, authorization: str | None, access_token: str | None = None) -> UUID | None:
        """The caller's user id, None when auth is off; ApiError 401 for a missing or bad token."""
        if self.secret is None:
            return None
        token = _bearer(authorization) if authorization else access_token
        if not token:
            raise ApiError(
                401, "unauthorized", "an access token is required (Authorization: Bearer ...)", CHALLENGE
            )
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                audience=self.audience,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise ApiError(401, "unauthorized", f"invalid access token: {exc}", CHALLENGE) from exc
        try:
            return UUID(str(claims["sub"]))
        except ValueError:
            raise ApiError(401, "unauthorized", "the token's subject is not a user id", CHALLENGE) from None


def _bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "the Authorization header must be 'Bearer <token>'", CHALLENGE)
    return token.strip()

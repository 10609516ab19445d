"""Supabase-style access tokens (HS256, aud=authenticated) for the web tests."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt

SECRET = "test-jwt-secret-with-32-characters!"


def token(
    sub: uuid.UUID | str | None, *, secret: str = SECRET, expires_in: float = 3600, **claims: Any
) -> str:
    """A signed access token for `sub` (none without one), `claims` on top of the usual three."""
    payload: dict[str, Any] = {
        "aud": "authenticated",
        "role": "authenticated",
        "exp": time.time() + expires_in,
    }
    if sub is not None:
        payload["sub"] = str(sub)
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(sub: uuid.UUID, *, secret: str = SECRET, expires_in: float = 3600) -> dict[str, str]:
    """An Authorization header carrying `token(sub)`."""
    return {"Authorization": f"Bearer {token(sub, secret=secret, expires_in=expires_in)}"}

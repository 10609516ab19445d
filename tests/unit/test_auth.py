"""The admin credential: the admin token (compared in constant time) or a service_role JWT."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.tokens import SECRET, token
from web.auth import Auth
from web.errors import ApiError
from web.settings import WebSettings

ADMIN_TOKEN = "admin-token-of-some-thirty-chars"
ALICE = uuid.UUID(int=1)


def service_key(secret: str = SECRET, **claims: object) -> str:
    """A token shaped like Supabase's service key: role service_role, no `sub`, no `aud`."""
    payload = {"iss": "supabase", "role": "service_role", "exp": time.time() + 3600, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def test_the_admin_token_makes_an_admin_with_or_without_the_jwt_secret() -> None:
    """`Bearer <admin token>` is an admin, as a header or as ?access_token=, whether auth is on or off."""
    for secret in (SECRET, None):
        auth = Auth(secret, admin_token=ADMIN_TOKEN)
        assert auth.caller(f"Bearer {ADMIN_TOKEN}").admin
        assert auth.caller(None, ADMIN_TOKEN).admin
        assert auth.caller(f"Bearer {ADMIN_TOKEN}").owner is None


def test_a_service_role_jwt_is_an_admin_and_a_user_token_is_not() -> None:
    """Supabase's service key (no sub, no aud) is an admin; a user's token is not, nor is a wrong key."""
    auth = Auth(SECRET)
    assert auth.caller(f"Bearer {service_key()}").admin
    caller = auth.caller(f"Bearer {token(ALICE)}")
    assert caller.owner == ALICE and not caller.admin
    for bad in (service_key(exp=time.time() - 60), service_key(secret="another-secret-of-32-characters!!!")):
        with pytest.raises(ApiError) as refused:
            auth.caller(f"Bearer {bad}")
        assert refused.value.status == 401


def test_without_an_admin_token_nobody_is_an_admin_by_token() -> None:
    """No admin token configured: no bearer string makes an admin, and auth off stays anonymous."""
    assert not Auth(None).caller(f"Bearer {ADMIN_TOKEN}").admin
    assert not Auth(None, admin_token=ADMIN_TOKEN).caller("Bearer wrong-token").admin
    with pytest.raises(ApiError):
        Auth(SECRET).caller(f"Bearer {ADMIN_TOKEN}")


@given(st.text(st.characters(codec="utf-8"), max_size=64))
def test_no_other_string_is_the_admin_token(guess: str) -> None:
    """Any string but the admin token itself is refused (auth on) or anonymous (auth off)."""
    if guess.strip() == ADMIN_TOKEN:
        return
    assert not Auth(None, admin_token=ADMIN_TOKEN).caller(f"Bearer {guess}").admin
    with pytest.raises(ApiError) as refused:
        Auth(SECRET, admin_token=ADMIN_TOKEN).caller(None, guess)
    assert refused.value.status == 401


def test_a_short_admin_token_is_refused() -> None:
    """An admin token under 16 characters is a configuration error, named as such."""
    with pytest.raises(ValueError, match="admin token must be at least 16"):
        WebSettings(admin_token="short")
    assert WebSettings(admin_token=ADMIN_TOKEN).admin_token is not None

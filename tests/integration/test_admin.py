"""The admin credential over HTTP: an admin sees every user's job; a user sees only their own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import jwt
import pytest
from fastapi.testclient import TestClient

from db.connect import Target
from queues import load_catalog
from tests.support.tokens import SECRET, bearer
from web import create_app
from web.settings import WebSettings

ALICE, BOB = uuid.UUID(int=1), uuid.UUID(int=2)
ADMIN_TOKEN = "admin-token-of-some-thirty-chars"


def service_key() -> str:
    """Shaped like Supabase's service key: role service_role, no sub, no aud."""
    claims = {"iss": "supabase", "role": "service_role", "exp": time.time() + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.fixture
def api(target: Target) -> Iterator[TestClient]:
    settings = WebSettings(jwt_secret=SECRET, admin_token=ADMIN_TOKEN)
    with TestClient(create_app(target, settings=settings, catalog=load_catalog(["handlers"]))) as c:
        yield c


def test_an_admin_sees_any_users_job_and_another_user_does_not(api: TestClient) -> None:
    """The admin token and the service key read Alice's job and its stream; Bob gets a 404."""
    body = api.post("/jobs/text_stats", json={"text": "x"}, headers=bearer(ALICE)).json()
    assert api.get(body["status_url"], headers=bearer(BOB)).status_code == 404
    for admin in (ADMIN_TOKEN, service_key()):
        shown = api.get(body["status_url"], headers={"Authorization": f"Bearer {admin}"})
        assert shown.status_code == 200, shown.text
        assert shown.json()["owner"] == str(ALICE)
    wrong = api.get(body["status_url"], headers={"Authorization": f"Bearer {ADMIN_TOKEN}x"})
    assert wrong.status_code == 401


def test_a_job_an_admin_enqueues_has_no_owner(api: TestClient) -> None:
    """The admin token is nobody's user id: its jobs have no owner."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    body = api.post("/jobs/text_stats", json={"text": "x"}, headers=admin).json()
    assert api.get(body["status_url"], headers=admin).json()["owner"] is None

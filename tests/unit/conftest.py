"""The unit layer runs without a database: a unit test that asks for one fails at once, naming why."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def server_url() -> str:
    """Stands in for tests/conftest.py's: every database fixture (db_url, conn, target...) needs it."""
    pytest.fail("a unit test asked for the database: it belongs in tests/integration", pytrace=False)

"""Retry delays for `@handler(backoff=...)`: the one Backoff, which lives in db.backoff."""

from db.backoff import Backoff

__all__ = ["Backoff"]

"""The project's reference handlers; `pgmq-worker run` imports this package by default."""

from handlers import text

__all__ = ["text"]

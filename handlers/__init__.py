"""The project's reference handlers; `pgmq-worker run` imports this package by default."""

from handlers import report, text

__all__ = ["report", "text"]

"""The project's reference handlers; `pgmq-worker run` imports this package by default."""

from handlers import images, language, report, text

__all__ = ["images", "language", "report", "text"]

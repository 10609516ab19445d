"""structlog setup for every process (worker, web, CLI): JSON in production, console on a TTY."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from typing import Any, Literal

import orjson
import structlog

from db.redact import Redactor


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: Literal["debug", "info", "warning", "error"] = "info",
    secrets: Iterable[str] = (),
) -> None:
    """Configure structlog once, at the CLI edge; `secrets` are masked in every line logged."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer(_orjson_dumps)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if not use_console else _identity,
            Redactor(renderer, secrets),  # the rendered line, tracebacks included
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # One write per event (message and newline together): the worker processes of
        # `run --processes N` share one stderr, and print()'s two writes interleave there.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        # Not cached: module-level loggers would then ignore later reconfiguration (tests).
        cache_logger_on_first_use=False,
    )


def _orjson_dumps(event: Any, **kw: Any) -> str:
    """JSON lines with orjson: the stdlib encoder was a tenth of the worker's CPU per job at info level."""
    # Non-string keys are stringified as json.dumps would; unknown types go to structlog's fallback.
    try:
        return orjson.dumps(event, option=orjson.OPT_NON_STR_KEYS, **kw).decode()
    except TypeError:  # what orjson refuses (an int past 64 bits): the stdlib encoder takes it
        return json.dumps(event, **kw)


def _identity(_logger: object, _name: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    return event


def get_logger() -> structlog.stdlib.BoundLogger:
    """The project logger (events are fixed `noun.verb` names with key-values)."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger("pgmq_worker")
    return logger

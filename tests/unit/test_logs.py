"""Log lines: each event reaches stderr in one write, so processes sharing stderr never splice lines."""

from __future__ import annotations

import io
import json
import sys

import pytest

from db.logs import configure_logging, get_logger


class CountingStream(io.StringIO):
    """A stderr stand-in that records every write call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_each_json_event_is_one_whole_line_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = CountingStream()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("json", "info")  # conftest resets structlog after each test
    get_logger().info("job.started", queue="q", msg_id=7)
    get_logger().debug("job.noise")  # filtered by level: no write at all
    assert len(stream.writes) == 1, stream.writes
    [line] = stream.writes
    assert line.endswith("\n") and line.count("\n") == 1
    event = json.loads(line)
    assert event["event"] == "job.started" and event["msg_id"] == 7 and event["level"] == "info"

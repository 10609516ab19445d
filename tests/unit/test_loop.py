"""The worker's event loop: uvloop where installed unless PGMQ_WORKER_EVENT_LOOP says otherwise."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from worker import loop, settings
from worker.loop import loop_name, uvloop_installed
from worker.settings import WorkerSettings


async def _which() -> str:
    await asyncio.sleep(0)
    return loop_name()


@pytest.mark.skipif(not uvloop_installed(), reason="uvloop is not installed here")
def test_auto_and_uvloop_run_on_uvloop_where_it_is_installed() -> None:
    assert loop.run(_which(), "auto") == "uvloop"
    assert loop.run(_which(), "uvloop") == "uvloop"


def test_asyncio_runs_on_asyncio_s_own_loop() -> None:
    assert loop.run(_which(), "asyncio") == "asyncio"


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "uvloop_installed", lambda: False)
    assert loop.run(_which(), "auto") == "asyncio"


def test_asking_for_uvloop_without_it_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "uvloop_installed", lambda: False)
    with pytest.raises(ValidationError, match="uvloop is not installed"):
        WorkerSettings(event_loop="uvloop")
    assert WorkerSettings(event_loop="auto").event_loop == "auto"


def test_the_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGMQ_WORKER_EVENT_LOOP", "asyncio")
    assert WorkerSettings().event_loop == "asyncio"

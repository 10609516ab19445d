"""Handlers for the secrets tests: one calls the chat API with a key (a local server that refuses it)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from handlers.llm import LlmSettings, chat
from worker import Context, handler


class Answer(BaseModel):
    """Whatever the stand-in would answer."""

    text: str


@handler("secret_llm", max_attempts=1)
async def ask_llm(payload: dict[str, Any], ctx: Context) -> dict[str, str]:
    """Ask the configured chat API once; a refused key dead-letters the job (Permanent)."""
    async with chat(ctx, LlmSettings()) as llm:
        answer = await llm.ask("You answer", str(payload.get("text", "")), Answer)
    return {"text": answer.text}

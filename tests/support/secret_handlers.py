"""Handlers for the secrets tests: one calls the chat API with a key (a local server that refuses it);
two raise with the process's secrets in their message, as a careless handler would."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote

import httpx
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


def _raise_leaky() -> None:
    """An httpx error whose URL carries the webhook secret as a query parameter (escaped: `%3D`),
    re-raised with the API key, DATABASE_URL and its decoded password in the message."""
    url = os.environ["DATABASE_URL"]
    key = os.environ["PGMQ_WORKER_LLM_API_KEY"]
    password = unquote(url.partition("://")[2].rpartition("@")[0].partition(":")[2])
    request = httpx.Request(
        "GET", "https://api.example.com/v1", params={"key": os.environ["PGMQ_WORKER_WEBHOOK_SECRET"]}
    )
    try:
        httpx.Response(401, request=request).raise_for_status()
    except httpx.HTTPStatusError as exc:
        raise RuntimeError(f"call failed with key {key} on {url} (password {password})") from exc


@handler("secret_retried", max_attempts=5, backoff=3600)
async def leaks_and_retries(payload: dict[str, Any], ctx: Context) -> None:
    """Raise with secrets in the message; retried an hour later."""
    _raise_leaky()


@handler("secret_dead", max_attempts=1)
async def leaks_and_dies(payload: dict[str, Any], ctx: Context) -> None:
    """Raise with secrets in the message; dead-lettered (max_attempts) at once."""
    _raise_leaky()

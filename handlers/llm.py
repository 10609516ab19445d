"""An OpenAI-compatible chat client for handlers: JSON answers, validated, under the shared `llm` limit.

    settings = LlmSettings()                       # PGMQ_WORKER_LLM_BASE_URL, _MODEL, _API_KEY
    async with chat(ctx, settings) as llm:
        answer = await llm.ask(SYSTEM, user_text, Translation)   # a validated pydantic model

Every request is `POST {base_url}/chat/completions` asking for a JSON object
(`response_format: json_object`; turn it off with PGMQ_WORKER_LLM_JSON_MODE=false for servers
that refuse it), made while holding a slot of `LLM` (5 at once, 60 a minute, across every
worker). What the answers mean for the job is handlers.provider's rule: 429 is RateLimited (a
deferral after Retry-After, not an attempt); 5xx, timeouts and connection errors fail the
attempt (retried with backoff); 400/401/403/404/422 are Permanent; an answer without a JSON
object of the promised shape is a ProviderError (retried: models do return garbage now and then).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, Final, TypeVar

import httpx
from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from handlers.provider import ProviderError, post_json
from worker import Context, Limit

LLM: Final = Limit("llm", concurrency=5, per_minute=60)
NOT_CONFIGURED: Final = "no LLM configured: set PGMQ_WORKER_LLM_BASE_URL"
FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)  # some models wrap JSON in a code block
M = TypeVar("M", bound=BaseModel)


class LlmSettings(BaseSettings):
    """The chat API: PGMQ_WORKER_LLM_BASE_URL (e.g. https://api.openai.com/v1), _MODEL, _API_KEY."""

    model_config = SettingsConfigDict(env_prefix="PGMQ_WORKER_LLM_", extra="ignore")
    base_url: str | None = Field(
        default=None,
        description="An OpenAI-compatible chat API, e.g. `https://api.openai.com/v1`. Unset: the LLM "
        "steps finish as skipped.",
    )
    model: str = Field(default="gpt-4o-mini", description="The chat model.")
    api_key: SecretStr | None = Field(default=None, description="Sent as `Authorization: Bearer`.")
    request_timeout: timedelta = Field(default=timedelta(seconds=60), description="Per chat request.")
    json_mode: bool = Field(
        default=True, description='Send `response_format={"type": "json_object"}` (off for APIs without it).'
    )

    @property
    def configured(self) -> bool:
        """True when a base URL is set."""
        return bool(self.base_url)


class ChatClient:
    """One delivery's connection to the chat API."""

    def __init__(self, ctx: Context, settings: LlmSettings, base_url: str, client: httpx.AsyncClient) -> None:
        self.ctx = ctx
        self.settings = settings
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.client = client

    async def ask(self, system: str, user: str, answer: type[M]) -> M:
        """The model's answer to `user` under `system`, parsed as JSON into `answer`."""
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": 0.2,
        }
        if self.settings.json_mode:
            body["response_format"] = {"type": "json_object"}
        key = self.settings.api_key.get_secret_value() if self.settings.api_key else None
        async with self.ctx.limit(LLM):
            reply = await post_json(self.client, self.url, body, api_key=key, what="LLM")
        return parse_answer(reply, answer)


@asynccontextmanager
async def chat(ctx: Context, settings: LlmSettings) -> AsyncIterator[ChatClient]:
    """A ChatClient for this delivery (ValueError when no base URL is configured)."""
    if not settings.base_url:
        raise ValueError(NOT_CONFIGURED)
    async with httpx.AsyncClient(timeout=settings.request_timeout.total_seconds()) as client:
        yield ChatClient(ctx, settings, settings.base_url, client)


def parse_answer(reply: dict[str, Any], answer: type[M]) -> M:
    """`choices[0].message.content` as JSON validated into `answer`; ProviderError saying what is wrong."""
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ProviderError("LLM: the answer has no choices[0].message.content") from None
    if not isinstance(content, str) or not content.strip():
        raise ProviderError("LLM: choices[0].message.content is empty")
    text = content.strip()
    fenced = FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except ValueError:
        raise ProviderError(f"LLM: the answer is not JSON: {_excerpt(text)}") from None
    try:
        return answer.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}" for e in exc.errors())
        raise ProviderError(f"LLM: the answer is not the {answer.__name__} asked for: {problems}") from None


def _excerpt(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat[:limit] + ("..." if len(flat) > limit else "")

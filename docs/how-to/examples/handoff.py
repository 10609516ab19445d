"""A two-queue pipeline: `read_page` hands each page's words to the `word_index` queue with its ack."""

from __future__ import annotations

import re
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from queues import Contract
from worker import Context, handler

WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


class PageUploaded(BaseModel):
    """A page's text, to be read into words."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    page_id: str = Field(min_length=1, max_length=100)
    text: str = Field(max_length=100_000)


class PageRead(BaseModel):
    """The distinct words of a page, to be indexed."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    page_id: str
    words: list[str]


PAGES: Final = Contract("page_words", PageUploaded)
INDEX: Final = Contract("word_index", PageRead)


@handler(PAGES, max_attempts=3)
def read_page(payload: PageUploaded, ctx: Context) -> dict[str, int]:
    """The page's distinct words, handed to the index queue: sent if and only if this delivery is acked."""
    words = sorted({w.lower() for w in WORD.findall(payload.text)})
    ctx.enqueue(INDEX, PageRead(page_id=payload.page_id, words=words))  # validated now, sent with the ack
    return {"words": len(words)}


@handler(INDEX, max_attempts=5)
async def index_words(payload: PageRead, ctx: Context) -> dict[str, object]:
    """The next stage, on its own queue: it can run on other machines, with its own limits."""
    ctx.log.info("index.words", page_id=payload.page_id, words=len(payload.words))
    return {"page_id": payload.page_id, "indexed": len(payload.words)}

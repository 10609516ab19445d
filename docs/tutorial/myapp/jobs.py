"""The tutorial's job: a word report in two steps, each one stored when it finishes."""

from __future__ import annotations

import re
from collections import Counter
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from queues import Contract
from worker import Context, handler

WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


class WordReport(BaseModel):
    """Count the words of `text`, then rank the `top` most frequent."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    text: str = Field(min_length=1, max_length=100_000)
    top: int = Field(default=3, ge=1, le=20)


WORD_REPORT: Final = Contract("word_report", WordReport)  # the queue name and its payload, together


def count_words(text: str) -> dict[str, int]:
    """How often each word occurs (lower-cased)."""
    return dict(Counter(w.lower() for w in WORD.findall(text)))


def rank(counts: dict[str, int], top: int) -> list[list[object]]:
    """The `top` most frequent words with their counts, most frequent first, ties alphabetically.

    Ties are broken by the word, not by the dict's order: a resumed job gets `counts` back from
    the database as JSON, whose objects do not keep the order the keys were written in.
    """
    return [[word, n] for word, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]]


@handler(WORD_REPORT, max_attempts=3, steps=["count", "rank"])
async def word_report(payload: WordReport, ctx: Context) -> dict[str, object]:
    """Two steps; a retry after `count` finished starts at `rank`, with count's stored output."""
    counts = await ctx.step("count", count_words, payload.text)  # a plain def runs in a thread
    top = await ctx.step("rank", rank, counts, payload.top)
    return {"words": sum(counts.values()), "unique_words": len(counts), "top": top}

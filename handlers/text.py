"""A reference handler: word statistics for a piece of text (a `def` handler, run in a thread)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from queues import Contract
from worker import Context, handler

WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*", re.UNICODE)  # \u2019: typographic apostrophe


class TextStatsRequested(BaseModel):
    """Count the words of `text` and report the `top` most frequent."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    text: str = Field(min_length=1, max_length=200_000)
    top: int = Field(default=5, ge=1, le=100)


TEXT_STATS: Final = Contract("text_stats", TextStatsRequested)


@handler(TEXT_STATS, max_attempts=3, timeout=60)
def text_stats(payload: TextStatsRequested, ctx: Context) -> dict[str, object]:
    """Word, unique-word and character counts, and the most frequent words."""
    words = [w.lower() for w in WORD.findall(payload.text)]
    counts = Counter(words)
    result: dict[str, object] = {
        "characters": len(payload.text),
        "words": len(words),
        "unique_words": len(counts),
        "top": counts.most_common(payload.top),
    }
    ctx.log.info("text_stats.counted", words=len(words), unique_words=len(counts))
    return result

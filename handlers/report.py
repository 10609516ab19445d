"""A reference handler with several visible steps: a reading report on a piece of English text.

Each step does real work and reports progress with its name, so the dev page's bar and step
label move. `pace` (seconds to pause after each step, 0 by default) exists only so a person can
watch the steps of a small text go by; a real pipeline's steps take their own time.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections import Counter
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from handlers.text import WORD
from queues import Contract
from worker import Context, handler

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'\u201c\u2018(]?[A-Z0-9])")
VOWEL_GROUPS = re.compile(r"[aeiouy]+")
_STOPWORDS = """a about above after again against all am an and any are as at be because been before being
below between both but by can did do does doing down during each few for from further had has have having he
her here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself yourselves"""
STOPWORDS: Final = frozenset(_STOPWORDS.split())

EXAMPLE_TEXT = (
    "Background work should never block a web request. A queue in Postgres keeps every job safe "
    "while workers run it. When a worker crashes, the message reappears after its visibility "
    "timeout and another worker picks it up. Progress rows let the browser follow each step live. "
    "Nothing here needs Redis, and nothing is lost when a deploy restarts the machines."
)


class ReportRequested(BaseModel):
    """Write a reading report on `text`: sentences, words, readability, keywords and a summary."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={"examples": [{"text": EXAMPLE_TEXT, "summary_sentences": 2, "pace": 0.6}]},
    )
    text: str = Field(min_length=1, max_length=500_000)
    summary_sentences: int = Field(default=2, ge=1, le=20)
    keywords: int = Field(default=8, ge=1, le=50)
    pace: float = Field(default=0.0, ge=0.0, le=5.0, description="Seconds to pause after each step.")


TEXT_REPORT: Final = Contract("text_report", ReportRequested)


# --8<-- [start:handler]
@handler(TEXT_REPORT, max_attempts=3, timeout=120)
async def text_report(payload: ReportRequested, ctx: Context) -> dict[str, object]:
    """A reading report in six steps: normalise, sentences, words, readability, keywords, summary."""

    async def step(done: int, name: str, **detail: object) -> None:
        await ctx.progress(done, step=name, detail=detail or None)
        if payload.pace and done < 100:  # no pause after the last step: the result is ready
            await asyncio.sleep(payload.pace)

    text = " ".join(unicodedata.normalize("NFC", payload.text).split())
    await step(10, "normalise", characters=len(text))

    sentences = split_sentences(text)
    await step(25, "sentences", sentences=len(sentences))

    words = [w.lower() for w in WORD.findall(text)]
    counts = Counter(words)
    await step(45, "words", words=len(words), unique_words=len(counts))

    ease = reading_ease(len(sentences), words)
    await step(65, "readability", flesch_reading_ease=ease)

    keywords = [(w, n) for w, n in counts.most_common() if w not in STOPWORDS and len(w) > 2][
        : payload.keywords
    ]
    await step(85, "keywords", keywords=[w for w, _ in keywords])

    summary = summarise(sentences, dict(keywords), payload.summary_sentences)
    await step(100, "summary", sentences=len(summary))
    return {
        "characters": len(text),
        "sentences": len(sentences),
        "words": len(words),
        "unique_words": len(counts),
        "flesch_reading_ease": ease,
        "keywords": keywords,
        "summary": summary,
    }


# --8<-- [end:handler]


def split_sentences(text: str) -> list[str]:
    """Sentences end at . ! or ? followed by space and a capital, digit or opening quote."""
    return [s for s in SENTENCE_END.split(text) if s.strip()]


def syllables(word: str) -> int:
    """An English syllable estimate: vowel groups, less a silent final e, at least one."""
    groups = len(VOWEL_GROUPS.findall(word.lower()))
    if word.lower().endswith("e") and not word.lower().endswith(("le", "ee")) and groups > 1:
        groups -= 1
    return max(1, groups)


def reading_ease(sentence_count: int, words: list[str]) -> float | None:
    """Flesch reading ease (higher is easier; 60-70 is plain English); None for no words."""
    if not words or not sentence_count:
        return None
    per_sentence = len(words) / sentence_count
    per_word = sum(syllables(w) for w in words) / len(words)
    return round(206.835 - 1.015 * per_sentence - 84.6 * per_word, 1)


def summarise(sentences: list[str], weights: dict[str, int], keep: int) -> list[str]:
    """The `keep` sentences that carry the most keyword weight, in their original order."""
    scored = [
        (sum(weights.get(w.lower(), 0) for w in WORD.findall(s)), -i, s) for i, s in enumerate(sentences)
    ]
    best = sorted(scored, reverse=True)[:keep]
    return [s for _, _, s in sorted(best, key=lambda t: -t[1])]

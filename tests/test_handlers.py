"""The reference handlers compute what they promise."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import structlog

from handlers.text import TEXT_STATS, TextStatsRequested, text_stats
from queues import InvalidPayload
from worker import Context


def ctx() -> Context:
    return Context("text_stats", 1, 1, 3, datetime.now(UTC), structlog.get_logger())


def test_text_stats_counts_words_with_apostrophes_and_hyphens() -> None:
    """Words keep inner apostrophes (straight or typographic) and hyphens; digits are not words."""
    result = text_stats(TextStatsRequested(text="Don\u2019t stop. Don't STOP rock-n-roll 42", top=2), ctx())
    assert result == {
        "characters": 37,
        "words": 5,
        "unique_words": 4,
        "top": [("stop", 2), ("don\u2019t", 1)],
    }


@pytest.mark.parametrize("body", [{"text": ""}, {"text": "x", "top": 0}, {"text": "x", "extra": 1}, {}])
def test_text_stats_refuses_bad_requests(body: dict[str, object]) -> None:
    """Empty text, a bad `top` and unknown fields fail the contract."""
    with pytest.raises(InvalidPayload):
        TEXT_STATS.parse(body)

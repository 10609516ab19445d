"""The reference handlers compute what they promise."""

from __future__ import annotations

import asyncio

import pytest

from handlers.report import TEXT_REPORT, split_sentences, syllables, text_report
from handlers.text import TEXT_STATS, TextStatsRequested, text_stats
from queues import InvalidPayload
from worker import Context


def ctx() -> Context:
    return Context.for_test("text_stats", max_attempts=3)


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


def test_text_report_steps_and_result() -> None:
    """text_report computes its figures and reports each of its six steps, in order, up to 100%."""
    reports: list[tuple[float, str | None]] = []

    class Recorder:
        async def report(self, report: object) -> None:
            reports.append((report.progress, report.step))

    context = Context.for_test("text_report", max_attempts=3, reporter=Recorder())
    text = "Cats chase mice. Dogs chase cats! Do mice chase dogs? Never."
    result = asyncio.run(text_report(TEXT_REPORT.parse({"text": text, "summary_sentences": 1}), context))
    assert [step for _, step in reports] == [
        "normalise",
        "sentences",
        "words",
        "readability",
        "keywords",
        "summary",
    ]
    assert [pct for pct, _ in reports] == sorted(pct for pct, _ in reports) and reports[-1][0] == 100
    assert result["sentences"] == 4 and result["words"] == 11
    assert result["keywords"][0] == ("chase", 3)
    assert result["summary"] == ["Cats chase mice."]
    assert split_sentences("Dr. Who? yes. No.") == ["Dr.", "Who? yes.", "No."]
    assert [syllables(w) for w in ("cat", "table", "queue", "beautiful")] == [1, 2, 1, 3]

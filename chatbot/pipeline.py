"""The answering pipeline: one function that live chat, hit testing and benchmarks all call."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django.conf import settings

from chatbot.models import Source
from kb.language import detect_language
from kb.selectors import EntryHit, entry_search


@dataclass(frozen=True)
class Answer:
    """The bot's reply to one question and everything that led to it."""

    source: str
    text: str
    entry_id: int | None
    score: float
    hits: list[EntryHit]
    decision: dict
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def retrieval(self) -> list[dict]:
        """The retrieval trace as stored with the message."""
        return [hit.trace() for hit in self.hits]


def answer_question(text: str) -> Answer:
    """Retrieve FAQ entries for ``text`` and decide: the best entry's answer if its score reaches
    the threshold, otherwise the fallback text in the customer's language."""
    started = time.perf_counter()
    language = detect_language(text)
    threshold = settings.CHATBOT_ANSWER_THRESHOLD
    result = entry_search(query=text)
    best = result.hits[0] if result.hits else None
    decision = {"threshold": threshold, "index_version": result.index_version, "language": language}
    if best is not None and best.score >= threshold:
        source, reply, entry_id = Source.FAQ, best.answer, best.entry_id
        decision["reason"] = "best score reaches the threshold"
    else:
        source, reply, entry_id = Source.FALLBACK, settings.CHATBOT_FALLBACK_TEXT[language], None
        if not result.readable:
            decision["reason"] = "the embedder cannot read this text"
        elif result.index_version is None:
            decision["reason"] = "no index has been published yet"
        elif best is None:
            decision["reason"] = "no entry retrieved"
        else:
            decision["reason"] = "best score is below the threshold"
    timings = {**result.timings_ms, "total": (time.perf_counter() - started) * 1000}
    return Answer(
        source=source,
        text=reply,
        entry_id=entry_id,
        score=best.score if best else 0.0,
        hits=result.hits,
        decision=decision,
        timings_ms={k: round(v, 2) for k, v in timings.items()},
    )

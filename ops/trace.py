"""A bot turn's stored record (Message.decision, retrieval, timings) drawn for people: the entries
retrieved with the phrasing that matched and their scores against the thresholds in force, the
decision and why, the LLM's context and citations, and each step's time."""

from __future__ import annotations

from dataclasses import dataclass, field

from chatbot.confidence import OUT_OF_SCOPE_FEATURE
from chatbot.decisions import score_verdict
from chatbot.models import Message, OutOfScopeExamples, PromptText
from kb.models import Entry, Variant


@dataclass(frozen=True)
class TraceHit:
    """One retrieved entry of a turn."""

    rank: int
    entry_id: int
    question: str  # "" for an entry deleted since
    category: str
    phrasing: str  # the phrasing that matched ("" when deleted since)
    score: float
    keyword_score: float | None
    answered: bool  # the reply came from this entry
    cited: bool  # the LLM's reply cites it
    verdict: str  # the score against the thresholds

    @property
    def percent(self) -> float:
        """The score as a bar's width (cosines below 0 draw as empty)."""
        return max(0.0, min(1.0, self.score)) * 100


@dataclass(frozen=True)
class Trace:
    """What the bot did on one turn, and why."""

    kind: str
    reason: str
    language: str
    thresholds: dict
    hits: list[TraceHit]
    confidence: dict | None
    llm: dict | None
    llm_prompt: list[dict] = field(default_factory=list)  # [{"role", "content"}] when stored
    options: list[dict] = field(default_factory=list)
    memory: dict | None = None
    pii: dict = field(default_factory=dict)
    timings_ms: dict = field(default_factory=dict)
    index_version: int | None = None
    search_mode: str = ""

    @property
    def answer_percent(self) -> float | None:
        value = self.thresholds.get("answer")
        return None if value is None else value * 100

    @property
    def clarify_percent(self) -> float | None:
        value = self.thresholds.get("clarify")
        return None if value is None else value * 100


def traces_of(messages: list[Message], *, with_prompt: bool = False) -> dict[int, Trace]:
    """The trace of each bot message of ``messages`` by its id (three queries for all of them)."""
    bot = [message for message in messages if message.role == "bot"]
    entry_ids = {hit.get("entry_id") for message in bot for hit in message.retrieval or []}
    variant_ids = {hit.get("variant_id") for message in bot for hit in message.retrieval or []}
    rows = Entry.objects.filter(id__in=entry_ids).values_list("id", "question", "category")
    entries = {row[0]: row[1:] for row in rows}
    phrasings = dict(Variant.objects.filter(id__in=variant_ids).values_list("id", "text"))
    prompts = {}
    if with_prompt:
        digests = {
            part["sha256"] for message in bot for part in ((message.decision or {}).get("llm") or {}).get("prompt", [])
        }
        prompts = dict(PromptText.objects.filter(sha256__in=digests).values_list("sha256", "text"))
    # The labelled out-of-scope question each confidence found nearest (the row's question list only).
    example_ids = {
        ((message.decision or {}).get("confidence") or {}).get("nearest_out_of_scope", {}).get("examples")
        for message in bot
    }
    example_ids.discard(None)
    examples = dict(OutOfScopeExamples.objects.filter(id__in=example_ids).values_list("id", "questions"))
    traces = {}
    for message in bot:
        decision = message.decision or {}
        thresholds = decision.get("thresholds") or {}
        cited = set(message.citations or [])
        hits = []
        for rank, hit in enumerate(message.retrieval or [], start=1):
            question, category = entries.get(hit.get("entry_id"), ("", ""))
            score = float(hit.get("score") or 0.0)
            hits.append(
                TraceHit(
                    rank=rank,
                    entry_id=hit.get("entry_id"),
                    question=question,
                    category=category,
                    phrasing=phrasings.get(hit.get("variant_id"), ""),
                    score=score,
                    keyword_score=hit.get("keyword_score"),
                    answered=message.entry_id is not None and hit.get("entry_id") == message.entry_id,
                    cited=hit.get("entry_id") in cited,
                    verdict=score_verdict(score, answer=thresholds.get("answer"), clarify=thresholds.get("clarify")),
                )
            )
        llm = decision.get("llm")
        prompt = [
            {"role": part["role"], "content": prompts.get(part["sha256"], "(not stored)")}
            for part in (llm or {}).get("prompt", [])
        ]
        traces[message.id] = Trace(
            kind=decision.get("kind", message.source),
            reason=decision.get("reason", ""),
            language=decision.get("language", ""),
            thresholds=thresholds,
            hits=hits,
            confidence=_confidence_with_nearest(decision.get("confidence"), examples),
            llm=llm,
            llm_prompt=prompt,
            options=decision.get("options") or [],
            memory=decision.get("memory"),
            pii=decision.get("pii") or {},
            timings_ms=message.timings_ms or {},
            index_version=decision.get("index_version"),
            search_mode=decision.get("search_mode", ""),
        )
    return traces


def _confidence_with_nearest(confidence: dict | None, examples: dict[int, list[str]]) -> dict | None:
    """The confidence trace, with ``nearest_question`` (the text of the labelled out-of-scope
    question it found nearest, "" when those examples are gone) and ``nearness`` when it read one."""
    nearest = (confidence or {}).get("nearest_out_of_scope")
    if not nearest:
        return confidence
    questions = examples.get(nearest.get("examples"), [])
    row = nearest.get("row", -1)
    return {
        **confidence,
        "nearest_question": questions[row] if 0 <= row < len(questions) else "",
        "nearness": (confidence.get("features") or {}).get(OUT_OF_SCOPE_FEATURE),
    }

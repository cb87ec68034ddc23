"""The answering pipeline: one function that live chat, hit testing, kb_calibrate and the
benchmarks all call. It retrieves and decides; generating an LLM reply (async, streamed) is the
caller's next step when the decision says so (chatbot.answering)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
from django.conf import settings

from chatbot import cues
from chatbot.confidence import OUT_OF_SCOPE_FEATURE, ConfidenceModel, out_of_scope_nearest
from chatbot.decision_record import DecisionRecord, record_of_search
from chatbot.decisions import ASKED_FOR_PERSON, Decision, Kind, Thresholds, decide
from chatbot.models import Source
from chatbot.selectors import out_of_scope_vectors, thresholds_for
from kb.embedders import get_embedder
from kb.language import detect_language
from kb.selectors import EntryHit, SearchResult, entry_search

SOURCE_OF_KIND = {
    Kind.FAQ: Source.FAQ,
    Kind.CLARIFY: Source.CLARIFY,
    Kind.LLM: Source.LLM,
    Kind.HANDOFF: Source.HANDOFF,
}


@dataclass(frozen=True)
class Answer:
    """The bot's decision on one question and everything that led to it. ``text`` is final for
    FAQ, clarify and hand-off; for the LLM kind the caller generates it."""

    kind: Kind
    source: str
    text: str
    entry_id: int | None
    score: float
    hits: list[EntryHit]
    options: list[dict]  # [{"entry_id", "question"}] when clarifying
    language: str
    decision: DecisionRecord
    # The best hit's retrieval features and the answer confidence read from them, when computed.
    features: dict[str, float] | None = None
    confidence: float | None = None
    # The question's vector as the index scored it, when the features were computed (kb_calibrate
    # measures nearness between labelled questions with it).
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def retrieval(self) -> list[dict]:
        """The retrieval trace as stored with the message."""
        return list(self.decision.retrieval)

    @property
    def timings_ms(self) -> dict[str, float]:
        """Each step's time (embed, search, keyword, fuse, total)."""
        return self.decision.timings_ms


def reply_text(kind: str, language: str) -> str:
    """A fixed reply of the bot ("clarify", "handoff_offer", "handoff_requested") in ``language``."""
    texts = settings.CHATBOT_REPLY_TEXT[kind]
    return texts.get(language) or texts["en"]


def answer_question(
    text: str,
    *,
    context_question: str = "",
    previous_entry_id: int | None = None,
    llm_available: bool | None = None,
    features: bool | None = None,
    customer_text: str | None = None,
) -> Answer:
    """Retrieve FAQ entries for ``text`` and decide what to do with it.

    ``context_question`` (the previous answer's entry question) marks ``text`` as a follow-up to
    resolve without an LLM: each entry is scored by the mean of its score for the message alone and
    for the message read after the previous question, and the previous entry itself is left out (a
    follow-up asks for something its answer did not say).

    When the language's thresholds have an answer-confidence model (chatbot.confidence), the best
    hit's retrieval features are computed and the model decides whether to answer; ``features``
    True computes them anyway (kb_calibrate fits the model on them).

    ``customer_text``: what the customer wrote, when ``text`` is a rewrite of it (an LLM's
    standalone question): whether they asked for a person is read from their own words only."""
    started = time.perf_counter()
    language = detect_language(text)
    thresholds = thresholds_for(language=language)
    if llm_available is None:
        from chatbot.llm import get_llm

        llm_available = get_llm() is not None
    model, unused = _confidence_model(thresholds)
    result = entry_search(query=text, features=bool(features) or model is not None)
    memory = None
    if context_question and result.readable:
        result, memory = _search_with_context(result, text, context_question, previous_entry_id)
    hits = result.hits
    confidence, nearest = None, None
    if model is not None:
        if memory is not None:
            unused = "a follow-up is ranked with the previous question: the score decides"
        elif result.features is None:
            unused = "no retrieval features (no hit, or an approximate index): the score decides"
        else:
            features, nearest, unused = _confidence_features(model, result)
            if features is not None:
                confidence = model.probability(features)
                result = replace(result, features=features)
    decision = decide(
        [hit.score for hit in hits],
        thresholds,
        confidence=confidence,
        asks_for_person=cues.asks_for_person(text if customer_text is None else customer_text),
        llm_available=llm_available,
    )
    if not result.readable and decision.kind != Kind.HANDOFF:
        decision = Decision(Kind.HANDOFF, "the embedder cannot read this text")
    elif result.index_version is None and decision.kind != Kind.HANDOFF:
        decision = Decision(Kind.HANDOFF, "no index has been published yet")
    trace = None
    if thresholds.uses_confidence:
        trace = {"value": None if confidence is None else round(confidence, 4), "threshold": thresholds.confidence}
        if unused:
            trace["unused"] = unused
        if result.features is not None:
            trace["features"] = {name: round(value, 4) for name, value in result.features.items()}
        if nearest is not None:
            trace["nearest_out_of_scope"] = nearest
    return _answer(decision, hits, result, thresholds, language, memory, started, confidence, trace)


def _confidence_model(thresholds: Thresholds) -> tuple[ConfidenceModel | None, str]:
    """The thresholds' confidence model if this process can use it, else None and why not."""
    if not thresholds.uses_confidence:
        return None, ""
    embedder = get_embedder().name
    if thresholds.confidence_model.embedder != embedder:
        return None, (
            f"the model was fitted for {thresholds.confidence_model.embedder}, this process embeds with "
            f"{embedder}: the score decides until kb_calibrate runs again"
        )
    return thresholds.confidence_model, ""


def _confidence_features(
    model: ConfidenceModel, result: SearchResult
) -> tuple[dict[str, float] | None, dict | None, str]:
    """The features ``model`` reads (the search's, plus the nearness to labelled out-of-scope
    questions when it reads that, with which of them was nearest: {"examples": row id, "row": n}),
    or None and why they cannot all be had."""
    features, nearest = result.features, None
    if OUT_OF_SCOPE_FEATURE in model.features:
        examples = None if model.examples is None else out_of_scope_vectors(model.examples)
        if examples is None or result.vector is None or examples.shape[1] != result.vector.shape[-1]:
            return (
                None,
                None,
                f"its out-of-scope examples (#{model.examples}) are gone or of another model: the score decides "
                "until kb_calibrate runs again",
            )
        similarity, row = out_of_scope_nearest(examples, result.vector)
        features = {**features, OUT_OF_SCOPE_FEATURE: similarity}
        nearest = {"examples": model.examples, "row": row}
    if missing := [name for name in model.features if name not in features]:
        # e.g. fitted with the entry classifier's features on an index published without one
        return None, None, f"the index gives no {', '.join(missing)}: the score decides until kb_calibrate runs again"
    return features, nearest, ""


def _search_with_context(
    plain: SearchResult, text: str, context_question: str, previous_entry_id: int | None
) -> tuple[SearchResult, dict]:
    contextual = entry_search(query=f"{context_question} {text}")
    plain_scores = {hit.entry_id: hit for hit in plain.hits}
    context_scores = {hit.entry_id: hit for hit in contextual.hits}
    # An entry missing from one list scored at most that list's lowest score there.
    floor_plain = min((hit.score for hit in plain.hits), default=0.0)
    floor_context = min((hit.score for hit in contextual.hits), default=0.0)
    merged = []
    for entry_id in plain_scores.keys() | context_scores.keys():
        if entry_id == previous_entry_id:
            continue
        base = plain_scores.get(entry_id) or context_scores[entry_id]
        score = (
            (plain_scores[entry_id].score if entry_id in plain_scores else floor_plain)
            + (context_scores[entry_id].score if entry_id in context_scores else floor_context)
        ) / 2
        merged.append(replace(base, score=score))
    merged.sort(key=lambda hit: hit.score, reverse=True)
    # Both searches' steps, added up (the contextual one may have run keyword search the plain one skipped).
    names = plain.timings_ms.keys() | contextual.timings_ms.keys()
    timings = {name: plain.timings_ms.get(name, 0) + contextual.timings_ms.get(name, 0) for name in names}
    memory = {"method": "previous_entry", "context_question": context_question, "excluded_entry_id": previous_entry_id}
    return replace(plain, hits=merged[: len(plain.hits)], timings_ms=timings), memory


def _answer(
    decision: Decision,
    hits: list[EntryHit],
    result: SearchResult,
    thresholds: Thresholds,
    language: str,
    memory: dict | None,
    started: float,
    confidence: float | None = None,
    confidence_trace: dict | None = None,
) -> Answer:
    best = hits[0] if hits else None
    options = [{"entry_id": hits[i].entry_id, "question": hits[i].question} for i in decision.options]
    entry_id, text = None, ""
    if decision.kind == Kind.FAQ:
        entry_id, text = best.entry_id, best.answer_for(language)
    elif decision.kind == Kind.CLARIFY:
        text = reply_text("clarify", language)
    elif decision.kind == Kind.HANDOFF:
        requested = decision.reason == ASKED_FOR_PERSON
        text = reply_text("handoff_requested" if requested else "handoff_offer", language)
    timings = {**result.timings_ms, "total": (time.perf_counter() - started) * 1000}
    record = record_of_search(
        decision,
        language=language,
        thresholds=thresholds,
        index_version=result.index_version,
        search_mode=result.mode,
        retrieval=[hit.trace() for hit in hits],
        options=options,
        memory=memory,
        confidence=confidence_trace,
        timings_ms={k: round(v, 2) for k, v in timings.items()},
    )
    return Answer(
        kind=decision.kind,
        source=SOURCE_OF_KIND[decision.kind],
        text=text,
        entry_id=entry_id,
        score=best.score if best else 0.0,
        hits=hits,
        options=options,
        language=language,
        decision=record,
        features=result.features,
        confidence=confidence,
        vector=result.vector,
    )

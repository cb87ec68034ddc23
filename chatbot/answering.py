"""One customer message answered end to end: resend check, PII redaction, conversation memory,
retrieval and decision (chatbot.pipeline), the streamed LLM fallback, storage, and the reply frame.

Async because the LLM streams; every database or model step runs in the answer pool
(chatbot.runtime.in_pool), so sockets do not queue behind each other's work.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import structlog
from django.conf import settings

from chatbot import cues, metrics
from chatbot.decision_record import record_for_customer, record_of_choice, record_with_llm
from chatbot.decisions import Kind
from chatbot.handoff import handoff_reply_in_hours
from chatbot.llm import GroundingEntry, Turn, get_llm
from chatbot.models import Conversation, Message, Source
from chatbot.pii import pii_redact
from chatbot.pipeline import Answer, answer_question, reply_text
from chatbot.runtime import in_pool
from chatbot.selectors import ConversationContext, conversation_context
from chatbot.services import BotReply, StoredReply, exchange_save, offered_suggestion, stored_reply
from chatbot.sites import site_by_id, site_llm_enabled
from kb.language import detect_language
from kb.models import Entry

OnDelta = Callable[[str], Awaitable[None]]

logger = structlog.stdlib.get_logger(__name__)


class ChoiceInvalid(ValueError):
    """A "choose" frame naming an entry that was not offered, or is no longer published."""


@dataclass(frozen=True)
class _Prepared:
    previous: Message | None
    redacted: str
    pii_found: dict
    context: ConversationContext | None


NO_CONTEXT = ConversationContext(turns=[], previous_entry_id=None, previous_question="")


def _prepare(
    conversation: Conversation, client_id: str, text: str, *, look_up_resend: bool = True, with_llm: bool = True
) -> _Prepared:
    previous = stored_reply(conversation=conversation, client_id=client_id) if look_up_resend else None
    if previous is not None:
        return _Prepared(previous, "", {}, None)
    redaction = pii_redact(text)
    if not with_llm and not cues.looks_like_follow_up(redaction.text):
        # Without an LLM, memory serves only a follow-up (it leans on the previous answer's entry):
        # any other message is answered alone, and most messages are not follow-ups, so most skip
        # the conversation's read (a database round trip and a redaction per remembered turn).
        return _Prepared(None, redaction.text, redaction.found, NO_CONTEXT)
    context = conversation_context(conversation=conversation, turns=settings.CHATBOT_MEMORY_TURNS)
    return _Prepared(None, redaction.text, redaction.found, context)


async def message_reply(*, conversation: Conversation, client_id: str, text: str, on_delta: OnDelta) -> StoredReply:
    """Answer one customer message and store both turns. A client id answered before gets its
    stored reply again. LLM tokens go to ``on_delta`` as they arrive; the stored reply is final."""
    started = time.perf_counter()
    stored = await _message_reply(conversation, client_id, text, on_delta)
    _answered("message answered", stored, started, decided=True)
    return stored


async def _message_reply(conversation: Conversation, client_id: str, text: str, on_delta: OnDelta) -> StoredReply:
    llm = get_llm()
    if llm is not None and not await site_llm_enabled(site_id=conversation.site_id):
        llm = None  # the conversation's site has the LLM fallback off: answer as without an LLM
    if llm is None:
        # Without an LLM the whole exchange is synchronous: one trip to the answer pool and one
        # database connection, instead of a thread hop (and a connection health check) per step.
        return await in_pool(_reply_without_llm)(conversation, client_id, text)
    prepared = await in_pool(_prepare)(conversation, client_id, text)
    if prepared.previous is not None:
        return StoredReply(message=prepared.previous, client_id=client_id, duplicate=True)
    llm_started = time.monotonic()
    history = _history(prepared)
    query, memory = prepared.redacted, None
    if _is_follow_up(prepared, history):
        # The rewrite and the answer share LLM_TIMEOUT: the rewrite may use at most half of it.
        _limit(llm, rewrite_timeout=min(settings.LLM_REWRITE_TIMEOUT, settings.LLM_TIMEOUT / 2))
        rewritten = await llm.rewrite(question=prepared.redacted, history=history)
        if rewritten:
            query, memory = rewritten, {"method": "llm_rewrite", "query": rewritten}
    answer = await in_pool(_decide)(prepared, history, query, memory, True)
    if answer.kind == Kind.LLM:
        budget = settings.LLM_TIMEOUT - (time.monotonic() - llm_started)
        _limit(llm, timeout=budget)
        reply = await _llm_reply(llm, answer, prepared.redacted, history, round(budget, 2), on_delta)
    else:
        reply = _reply(answer)
    return await in_pool(_store)(conversation, client_id, text, prepared, reply)


def _answered(event: str, stored: StoredReply, started: float, *, decided: bool) -> None:
    """Metrics and one log line for a reply sent. A resent message's stored reply is neither timed
    nor counted again. The line names the decision, never the customer's text."""
    message = stored.message
    if stored.duplicate:
        logger.info(event, message_id=message.id, duplicate=True)
        return
    seconds = time.perf_counter() - started
    kind = message.decision.get("kind", "")
    metrics.answer_observe(message.source, seconds)
    if decided and kind:
        metrics.decision_count(kind)
    logger.info(
        event,
        message_id=message.id,
        source=message.source,
        kind=kind,
        entry_id=message.entry_id,
        score=None if message.score is None else round(message.score, 4),
        pii=message.decision.get("pii") or None,  # kinds of personal data redacted, with counts
        ms=round(seconds * 1000, 1),
    )


def _reply_without_llm(conversation: Conversation, client_id: str, text: str) -> StoredReply:
    # No look-up for a resend first: answering again costs little here, and storing a client id
    # answered before hits the unique constraint, which makes exchange_save return the stored reply.
    # (With an LLM the look-up comes first: a second LLM call is slow and costs money.)
    prepared = _prepare(conversation, client_id, text, look_up_resend=False, with_llm=False)
    answer = _decide(prepared, _history(prepared), prepared.redacted, None, False)
    return _store(conversation, client_id, text, prepared, _reply(answer))


def _history(prepared: _Prepared) -> list[Turn]:
    return [Turn(role=role, text=pii_redact(turn_text).text) for role, turn_text in prepared.context.turns]


def _is_follow_up(prepared: _Prepared, history: list[Turn]) -> bool:
    return bool(history) and cues.looks_like_follow_up(prepared.redacted)


def _decide(prepared: _Prepared, history: list[Turn], query: str, memory: dict | None, llm_available: bool) -> Answer:
    """Retrieve and decide for ``query``; a follow-up that no LLM rewrote leans on the previous
    answer's entry. An LLM's rewrite is kept only if it retrieves better (a higher best score) than
    that reading of the customer's own words. The answer's record includes what was redacted and how
    memory was used."""
    answer = _decide_for(prepared, history, query, memory, llm_available)
    if memory is None or memory.get("method") != "llm_rewrite":
        return answer
    plain = _decide_for(prepared, history, prepared.redacted, None, llm_available)
    rewritten_best, plain_best = _best_score(answer), _best_score(plain)
    if rewritten_best > plain_best:
        return answer
    rejected = {
        "rewrite_rejected": memory["query"],
        "why": f"the rewrite retrieved no better ({rewritten_best:.3f}) than the message itself ({plain_best:.3f})",
    }
    return replace(plain, decision=replace(plain.decision, memory={**(plain.decision.memory or {}), **rejected}))


def _best_score(answer: Answer) -> float:
    return answer.hits[0].score if answer.hits else float("-inf")


def _decide_for(
    prepared: _Prepared, history: list[Turn], query: str, memory: dict | None, llm_available: bool
) -> Answer:
    context = prepared.context
    use_previous_entry = memory is None and context.previous_entry_id is not None and _is_follow_up(prepared, history)
    answer = answer_question(
        query,
        context_question=context.previous_question if use_previous_entry else "",
        previous_entry_id=context.previous_entry_id if use_previous_entry else None,
        llm_available=llm_available,
        customer_text=prepared.redacted,
    )
    record = record_for_customer(answer.decision, pii=prepared.pii_found, memory=memory)
    return replace(answer, decision=record)


def _store(conversation: Conversation, client_id: str, text: str, prepared: _Prepared, reply: BotReply) -> StoredReply:
    if reply.source == Source.HANDOFF and reply.record.handoff == "requested":
        reply = handoff_reply_in_hours(reply, site=site_by_id(conversation.site_id))
    stored_text = text if settings.CHATBOT_STORE_PII else prepared.redacted
    return exchange_save(conversation=conversation, client_id=client_id, customer_text=stored_text, reply=reply)


def _limit(llm, **limits: float) -> None:
    """Narrow this (per-message) LLM client's time limits; a plugged-in backend without an
    ``LlmConfig`` keeps its own."""
    if hasattr(llm, "config"):
        llm.config = replace(llm.config, **limits)


def _reply(answer: Answer, **overrides) -> BotReply:
    fields = {
        "source": answer.source,
        "text": answer.text,
        "record": answer.decision,
        "entry_id": answer.entry_id,
        "score": answer.score,
    }
    return BotReply(**{**fields, **overrides})


async def _llm_reply(llm, answer: Answer, question: str, history: list[Turn], budget: float, on_delta) -> BotReply:
    entries = [
        GroundingEntry(entry_id=hit.entry_id, question=hit.question, answer=hit.answer_for(answer.language))
        for hit in answer.hits
    ]
    result = await llm.answer(
        question=question, entries=entries, history=history, language=answer.language, on_delta=on_delta
    )
    timings = {**answer.timings_ms, **{f"llm_{name}": value for name, value in result.timings_ms.items()}}
    record = record_with_llm(
        answer.decision,
        status=result.status,
        attempts=result.attempts,
        error=result.error,
        model=result.model,
        messages=result.messages,
        budget_seconds=budget,
        timings_ms=timings,
        raw_reply=getattr(result, "raw", ""),
        system_role=getattr(result, "system_role", ""),
    )
    if result.status == "answered":
        return _reply(answer, source=Source.LLM, text=result.text, citations=result.citations, record=record)
    return _reply(answer, source=Source.HANDOFF, text=reply_text("handoff_offer", answer.language), record=record)


def _choose(conversation: Conversation, entry_id: int, client_id: str) -> StoredReply:
    previous = stored_reply(conversation=conversation, client_id=client_id)
    if previous is not None:
        return StoredReply(message=previous, client_id=client_id, duplicate=True)
    offer = offered_suggestion(conversation=conversation, entry_id=entry_id)
    entry = Entry.objects.filter(id=entry_id, is_published=True).first()
    if offer is None or entry is None:
        raise ChoiceInvalid("That entry was not offered in this conversation, or is no longer available.")
    # Answered in the language the customer asked in (the offer's), else the entry's.
    language = (offer.decision or {}).get("language") or detect_language(entry.question)
    record = record_of_choice(language=language, suggestion_message_id=offer.id)
    reply = BotReply(source=Source.FAQ, text=entry.answer_for(language), record=record, entry_id=entry.id, score=None)
    return exchange_save(conversation=conversation, client_id=client_id, customer_text=entry.question, reply=reply)


async def suggestion_choose(*, conversation: Conversation, entry_id: int, client_id: str | None = None) -> StoredReply:
    """Answer with an entry the customer picked from a "did you mean" list (stored as their turn)."""
    started = time.perf_counter()
    stored = await in_pool(_choose)(conversation, entry_id, client_id or f"choose-{uuid.uuid4()}")
    _answered("suggestion chosen", stored, started, decided=False)
    return stored

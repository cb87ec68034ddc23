"""Reads on the customer side."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from chatbot.decisions import Thresholds
from chatbot.models import Conversation, DecisionThresholds, Message, OutOfScopeExamples, PromptText, Role
from chatbot.protocol import HistoryItem, history_item
from kb.models import Entry


def conversation_history(*, conversation: Conversation, limit: int) -> list[HistoryItem]:
    """The last ``limit`` messages of a conversation, oldest first, as history frames carry them."""
    if not conversation.is_stored:
        return []
    messages = list(
        Message.objects.filter(conversation=conversation)
        .select_related("reply_to", "agent")
        .order_by("-created_at", "-id")[:limit]
    )
    return [history_item(message) for message in reversed(messages)]


_thresholds_cache: dict[str, tuple[float, Thresholds]] = {}


def thresholds_for(*, language: str) -> Thresholds:
    """The decision thresholds for questions in ``language``: its row, else English's, else the
    model defaults (a fresh database before the data migration). Kept in process memory for
    CHATBOT_THRESHOLDS_CACHE_SECONDS, so an edit reaches every web process within that long."""
    ttl = settings.CHATBOT_THRESHOLDS_CACHE_SECONDS
    cached = _thresholds_cache.get(language)
    if ttl > 0 and cached is not None and time.monotonic() - cached[0] < ttl:
        return cached[1]
    thresholds = _thresholds_read(language)
    if ttl > 0:
        _thresholds_cache[language] = (time.monotonic(), thresholds)
    return thresholds


def _thresholds_read(language: str) -> Thresholds:
    rows = {row.language: row for row in DecisionThresholds.objects.filter(language__in=[language, "en"])}
    row = rows.get(language) or rows.get("en") or DecisionThresholds(language=language)
    return row.as_thresholds(language)


_examples_cache: dict[int, np.ndarray | None] = {}
_EXAMPLES_CACHED = 4  # rows kept in memory; a confidence model reads one, a new calibration another
_examples_lock = threading.Lock()


def out_of_scope_vectors(examples_id: int) -> np.ndarray | None:
    """The vectors of OutOfScopeExamples ``examples_id`` (rows never change, so each is read from the
    database once per process); None when the row is gone."""
    if examples_id in _examples_cache:
        return _examples_cache[examples_id]
    row = OutOfScopeExamples.objects.filter(pk=examples_id).values_list("dimensions", "vectors").first()
    vectors = None
    if row is not None:
        dimensions, data = row
        vectors = np.frombuffer(bytes(data), dtype=np.float32).reshape(-1, dimensions)
    with _examples_lock:  # web processes answer on several threads
        while len(_examples_cache) >= _EXAMPLES_CACHED:
            _examples_cache.pop(next(iter(_examples_cache)))
        _examples_cache[examples_id] = vectors
    return vectors


@dataclass(frozen=True)
class ConversationContext:
    """What the bot remembers of a conversation when answering its next message."""

    turns: list[tuple[str, str]]  # (role, text), oldest first: customer and bot turns
    previous_entry_id: int | None  # the entry the last bot answer came from, if any
    previous_question: str  # that entry's question ("" when none)


def conversation_context(*, conversation: Conversation, turns: int) -> ConversationContext:
    """The last ``turns`` customer/bot messages and the entry the latest bot answer used."""
    if not conversation.is_stored:
        return ConversationContext(turns=[], previous_entry_id=None, previous_question="")
    # Only the columns memory needs: the stored traces (retrieval, decision) are the bulk of a
    # bot message, and this runs for every customer message.
    recent = list(
        Message.objects.filter(conversation=conversation, role__in=[Role.CUSTOMER, Role.BOT])
        .order_by("-created_at", "-id")
        .values_list("role", "text", "entry_id", "entry__question", "citations")[:turns]
    )
    previous_entry_id, previous_question = None, ""
    for role, _text, entry_id, entry_question, citations in recent:
        if role == Role.BOT:
            if entry_id is not None:
                previous_entry_id, previous_question = entry_id, entry_question
            elif citations:
                cited = Entry.objects.filter(id=citations[0]).values_list("id", "question").first()
                if cited is not None:
                    previous_entry_id, previous_question = cited
            break
    return ConversationContext(
        turns=[(role, text) for role, text, *_ in reversed(recent)],
        previous_entry_id=previous_entry_id,
        previous_question=previous_question,
    )


def llm_prompt_messages(message: Message) -> list[dict]:
    """The prompt the LLM was sent for this bot message, rebuilt from the stored prompt texts
    (chatbot.decision_record); [] when the LLM was not asked."""
    parts = (message.decision or {}).get("llm", {}).get("prompt", [])
    texts = dict(PromptText.objects.filter(sha256__in=[part["sha256"] for part in parts]).values_list("sha256", "text"))
    return [{"role": part["role"], "content": texts.get(part["sha256"], "")} for part in parts]

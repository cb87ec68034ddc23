"""The record of why the bot replied as it did: one typed value, built only here, stored with every
bot message (``Message.decision``, ``Message.retrieval`` and ``Message.timings_ms``) and shown by
hit testing, the API and transcripts.

The LLM's prompt is not stored on each turn: its messages are kept once each, by content hash, in
``PromptText`` (the instructions are the same for every conversation in a language, and each turn's
prompt repeats the turns before it), and the record keeps the hashes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

from chatbot.decisions import ASKED_FOR_PERSON, Decision, Kind, Thresholds


@dataclass(frozen=True)
class PromptPart:
    """One message of an LLM prompt, by reference: its role and the SHA-256 of its content."""

    role: str
    sha256: str


def prompt_parts(messages: list[dict]) -> tuple[tuple[PromptPart, ...], dict[str, str]]:
    """The prompt as references, and the texts they refer to (hash → content) for storing once."""
    parts, texts = [], {}
    for message in messages:
        content = message["content"]
        digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
        parts.append(PromptPart(role=message["role"], sha256=digest))
        texts[digest] = content
    return tuple(parts), texts


@dataclass(frozen=True)
class LlmOutcome:
    """What the LLM fallback did on one turn."""

    status: str  # "answered" | "no_answer" | "ungrounded" | "failed" | "blocked"
    attempts: int
    error: str
    model: str
    prompt: tuple[PromptPart, ...] = ()
    budget_seconds: float | None = None  # what was left of LLM_TIMEOUT when the answer started
    raw_reply: str = ""  # the model's reply as it came (kept also when it was not shown)
    system_role: str = ""  # "system", or "user" when the instructions were folded into the first user turn


@dataclass(frozen=True)
class DecisionRecord:
    """Why the bot replied as it did, with what it retrieved and how long each step took."""

    kind: Kind
    reason: str
    language: str = ""
    thresholds: Thresholds | None = None
    index_version: int | None = None
    search_mode: str = ""
    retrieval: tuple[dict, ...] = ()  # each hit's trace (kb.selectors.EntryHit.trace)
    options: tuple[dict, ...] = ()  # "did you mean": [{"entry_id", "question"}]
    memory: dict | None = None  # how a follow-up was read: previous entry, or an LLM rewrite
    # The answer confidence, when the thresholds use one: value, threshold, the features it read,
    # and why it was not used ("unused") when the score decided instead.
    confidence: dict | None = None
    pii: dict = field(default_factory=dict)  # kinds of personal data redacted, with counts
    handoff: str | None = None  # "offered" | "requested" for a hand-off reply
    handoff_hours: str | None = None  # "closed": a person was asked for outside the site's opening hours
    llm: LlmOutcome | None = None
    suggestion_message_id: int | None = None  # a "choose": the suggestions message it picked from
    timings_ms: dict[str, float] = field(default_factory=dict)
    # Texts to store once (hash → content) for ``llm.prompt``; not part of the stored record.
    prompt_texts: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def decision_json(self) -> dict[str, Any]:
        """The record as stored in ``Message.decision`` (retrieval and timings have columns of
        their own). Keys of empty values are left out."""
        data: dict[str, Any] = {"kind": str(self.kind), "reason": self.reason, "language": self.language}
        if self.thresholds is not None:
            data["thresholds"] = self.thresholds.as_dict()
        if self.index_version is not None or self.search_mode:
            data["index_version"] = self.index_version
            data["search_mode"] = self.search_mode
        optional = {
            "options": list(self.options),
            "memory": self.memory,
            "confidence": self.confidence,
            "pii": self.pii,
            "handoff": self.handoff,
            "handoff_hours": self.handoff_hours,
            "suggestion_message_id": self.suggestion_message_id,
        }
        data.update({key: value for key, value in optional.items() if value})
        if self.llm is not None:
            data["llm"] = {
                "status": self.llm.status,
                "attempts": self.llm.attempts,
                "error": self.llm.error,
                "model": self.llm.model,
                "prompt": [{"role": part.role, "sha256": part.sha256} for part in self.llm.prompt],
            }
            if self.llm.budget_seconds is not None:
                data["llm"]["budget_seconds"] = self.llm.budget_seconds
            if self.llm.raw_reply:
                data["llm"]["raw_reply"] = self.llm.raw_reply
            if self.llm.system_role:
                data["llm"]["system_role"] = self.llm.system_role
        return data

    def as_json(self) -> dict[str, Any]:
        """The whole record, retrieval and timings included (the search API and hit testing)."""
        return {**self.decision_json(), "retrieval": list(self.retrieval), "timings_ms": dict(self.timings_ms)}


def record_of_search(
    decision: Decision,
    *,
    language: str,
    thresholds: Thresholds,
    index_version: int | None,
    search_mode: str,
    retrieval: list[dict],
    options: list[dict],
    memory: dict | None,
    timings_ms: dict[str, float],
    confidence: dict | None = None,
) -> DecisionRecord:
    """The record of a retrieve-and-decide step (chatbot.pipeline.answer_question)."""
    handoff = None
    if decision.kind == Kind.HANDOFF:
        handoff = "requested" if decision.reason == ASKED_FOR_PERSON else "offered"
    return DecisionRecord(
        kind=decision.kind,
        reason=decision.reason,
        language=language,
        thresholds=thresholds,
        index_version=index_version,
        search_mode=search_mode,
        retrieval=tuple(retrieval),
        options=tuple(options),
        memory=memory,
        confidence=confidence,
        handoff=handoff,
        timings_ms=timings_ms,
    )


def record_for_customer(record: DecisionRecord, *, pii: dict, memory: dict | None) -> DecisionRecord:
    """The record of a live customer message: what was redacted, and an LLM rewrite of a follow-up
    (which replaces the pipeline's own reading of it)."""
    return replace(record, pii=dict(pii), memory=memory or record.memory)


def record_with_llm(
    record: DecisionRecord,
    *,
    status: str,
    attempts: int,
    error: str,
    model: str,
    messages: list[dict],
    budget_seconds: float,
    timings_ms: dict[str, float],
    raw_reply: str = "",
    system_role: str = "",
) -> DecisionRecord:
    """The record after the LLM fallback ran; a reply that is not an answer offers a person."""
    parts, texts = prompt_parts(messages)
    outcome = LlmOutcome(
        status=status,
        attempts=attempts,
        error=error,
        model=model,
        prompt=parts,
        budget_seconds=budget_seconds,
        raw_reply=raw_reply,
        system_role=system_role,
    )
    changes: dict[str, Any] = {"llm": outcome, "prompt_texts": texts, "timings_ms": timings_ms}
    if status != "answered":
        changes.update(handoff="offered", reason=f"the LLM could not answer ({status})")
    return replace(record, **changes)


def record_of_choice(*, language: str, suggestion_message_id: int) -> DecisionRecord:
    """The record of a reply to a "did you mean" option the customer picked."""
    return DecisionRecord(
        kind=Kind.FAQ,
        reason="the customer chose a suggestion",
        language=language,
        suggestion_message_id=suggestion_message_id,
    )

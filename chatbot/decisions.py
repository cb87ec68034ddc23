"""The answer-or-not decision, as a pure function of the retrieved entries' scores, so live chat,
hit testing, kb_calibrate and the benchmarks all decide the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from chatbot.confidence import ConfidenceModel

ASKED_FOR_PERSON = "the customer asked for a person"
"""The reason of a hand-off the customer asked for (as opposed to one the bot offers)."""


class Kind(StrEnum):
    FAQ = "faq"  # answer with the best entry
    CLARIFY = "clarify"  # "did you mean": the best entries are too close to pick one
    LLM = "llm"  # no confident entry: ask the LLM, grounded on the retrieved entries
    HANDOFF = "handoff"  # offer a person (asked for, or nothing else can answer)


@dataclass(frozen=True)
class Thresholds:
    """A snapshot of one language's DecisionThresholds row.

    With a ``confidence_model`` and a ``confidence`` threshold, a question that is not clarified is
    answered when the model's P(the best entry is right) reaches ``confidence``; ``answer`` (on the
    best cosine) is the rule when the model cannot be used (no features: a follow-up, an
    approximate index, another embedder)."""

    language: str
    answer: float
    clarify: float
    margin: float
    max_suggestions: int = 3
    confidence: float | None = None
    confidence_model: ConfidenceModel | None = field(default=None, compare=False, repr=False)

    @property
    def uses_confidence(self) -> bool:
        """Whether these thresholds answer by the confidence model (when it can be evaluated)."""
        return self.confidence is not None and self.confidence_model is not None

    def as_dict(self) -> dict:
        """As stored in a message's decision trace (the model's coefficients are not repeated in
        every trace: they are in the thresholds' history)."""
        data = {
            "language": self.language,
            "answer": self.answer,
            "clarify": self.clarify,
            "margin": self.margin,
            "max_suggestions": self.max_suggestions,
        }
        if self.uses_confidence:
            data["confidence"] = self.confidence
        return data


@dataclass(frozen=True)
class Decision:
    """What to do with a question, why, and which hits to offer when clarifying."""

    kind: Kind
    reason: str
    options: tuple[int, ...] = ()  # positions in the hit list, best first


def decide(
    scores: Sequence[float],
    thresholds: Thresholds,
    *,
    confidence: float | None = None,
    asks_for_person: bool = False,
    llm_available: bool = False,
) -> Decision:
    """Decide from the scores of the retrieved entries (in ranking order) and, when the thresholds
    use it and it could be computed, the answer ``confidence`` (P(the best entry is right)).

    - the customer asked for a person: hand-off;
    - two or more entries reach the clarify threshold within the margin of the best: clarify;
    - the confidence reaches its threshold (or, without one, the best score reaches the answer
      threshold): FAQ;
    - otherwise the LLM (grounded on the hits) when one is configured, else hand-off.
    """
    if asks_for_person:
        return Decision(Kind.HANDOFF, ASKED_FOR_PERSON)
    fallback = Kind.LLM if llm_available else Kind.HANDOFF
    if not scores:
        return Decision(Kind.HANDOFF, "no entry retrieved")
    best = scores[0]
    close = [
        position
        for position, score in enumerate(scores)
        if score >= thresholds.clarify and best - score < thresholds.margin
    ][: thresholds.max_suggestions]
    if best >= thresholds.clarify and len(close) >= 2:
        return Decision(
            Kind.CLARIFY, f"{len(close)} entries score within {thresholds.margin:g} of each other", tuple(close)
        )
    if thresholds.uses_confidence and confidence is not None:
        if confidence >= thresholds.confidence:
            return Decision(Kind.FAQ, f"answer confidence {confidence:.3f} reaches {thresholds.confidence:.3f}")
        reason = f"answer confidence {confidence:.3f} is below {thresholds.confidence:.3f}"
    elif best >= thresholds.answer:
        return Decision(Kind.FAQ, "best score reaches the answer threshold")
    else:
        reason = "best score is below the answer threshold"
    return Decision(fallback, reason if llm_available else f"{reason} and no LLM is configured")


def score_verdict(score: float, *, answer: float | None, clarify: float | None) -> str:
    """A retrieved entry's score against the answer and did-you-mean thresholds, as editors and ops
    read it (hit testing, transcripts); "" without thresholds."""
    if answer is not None and score >= answer:
        return f"≥ answer {answer:.3f}"
    if clarify is None:
        return ""
    if score >= clarify:
        return f"≥ did-you-mean {clarify:.3f}" + (f", < answer {answer:.3f}" if answer is not None else "")
    return f"< did-you-mean {clarify:.3f}"

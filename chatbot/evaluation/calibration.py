"""Choosing the decision thresholds from labelled questions, out-of-scope ones included.

Each question is reduced to the scores of its retrieved entries (in ranking order) and whether
each is a right entry for it. For every candidate (answer threshold, clarify threshold, margin) the
questions are decided exactly as chatbot.decisions.decide would (vectorised here; a test checks
they agree) and scored as answer-vs-fallback:

- a right FAQ answer, or a "did you mean" list holding a right entry (one click away), is a hit;
- a FAQ answer from a wrong entry, or to an out-of-scope question, is a wrong answer;
- anything else (LLM fallback, hand-off, suggestions without a right entry) is a fallback.

precision = hits / (answers + helpful suggestion lists), recall = hits / in-scope questions, and
the wrong-answer rate = wrong answers / all questions. The chosen point maximises F1 with the
wrong-answer rate and the share of questions answered with a suggestion list under their caps.

The wrong-answer cap is a promise about questions to come, not only the ones measured: a point is
taken only when the rate's one-sided upper bound at ``cap_confidence`` (90% by default; normal
approximation over the number of questions) is under the cap. The best point by the measured rate
alone sits right at the cap, so half the time new questions go over it: on BANKING77-OOS the test
wrong-answer rate came out 5.05-5.40% under a 5% cap chosen that way, and 4.10-4.86% with the
bound, at the same F1 (docs/BENCHMARKS.md).

Pure arithmetic on scores: asking the questions is chatbot.evaluation.hit_testing's job, which
hands its cases over as ScoredQuestion.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from chatbot.decisions import Thresholds

MARGINS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1)
CLARIFY_BELOW_ANSWER = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2)
CAP_CONFIDENCE = 0.9  # how sure the wrong-answer cap must be kept, given how many questions were measured


def wrong_rate_bound(wrong_rate: float, questions: int, cap_confidence: float = CAP_CONFIDENCE) -> float:
    """The one-sided upper bound of a wrong-answer rate measured on ``questions`` questions, at
    ``cap_confidence`` (normal approximation; 0.5 gives the rate itself). None wrong bounds at 0:
    a small labelled set is not made infeasible by the bound alone."""
    if questions <= 0 or cap_confidence <= 0.5:
        return wrong_rate
    z = NormalDist().inv_cdf(cap_confidence)
    return wrong_rate + z * math.sqrt(wrong_rate * (1 - wrong_rate) / questions)


@dataclass(frozen=True)
class ScoredQuestion:
    """One labelled question as the pipeline saw it."""

    language: str
    scores: tuple[float, ...]  # retrieved entries' scores, in ranking order
    correct: tuple[bool, ...]  # whether each retrieved entry is a right one
    in_scope: bool
    # The best hit's retrieval features (kb.retrieval_features) and the answer confidence the live
    # pipeline read from them, when computed.
    features: dict[str, float] | None = None
    confidence: float | None = None


@dataclass(frozen=True)
class Metrics:
    """Answer-vs-fallback quality of one set of thresholds on a set of questions."""

    questions: int
    in_scope: int
    answered: int
    right_answers: int
    wrong_answers: int
    clarified: int
    helpful_clarifications: int
    precision: float
    recall: float
    f1: float
    wrong_rate: float
    clarify_rate: float
    out_of_scope_handled: float  # share of out-of-scope questions not answered from the FAQ

    def as_dict(self) -> dict:
        """Rounded, for JSON and the database."""
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(self).items()}


@dataclass(frozen=True)
class Calibration:
    """The chosen thresholds and what they achieve."""

    thresholds: Thresholds
    metrics: Metrics
    feasible: bool  # False when no candidate met the caps (the safest one is returned)
    candidates: int


class _Arrays:
    """Questions as padded arrays: scores (-inf padding), correct flags, in-scope flags, and the
    answer confidence (NaN where there is none: the best score decides those)."""

    def __init__(self, questions: list[ScoredQuestion], depth: int, confidence: np.ndarray | None = None):
        n = len(questions)
        self.scores = np.full((n, depth), -np.inf)
        self.correct = np.zeros((n, depth), dtype=bool)
        for row, question in enumerate(questions):
            width = min(depth, len(question.scores))
            self.scores[row, :width] = question.scores[:width]
            self.correct[row, :width] = question.correct[:width]
        self.in_scope = np.array([question.in_scope for question in questions], dtype=bool)
        self.best = self.scores[:, 0]
        if confidence is None:
            confidence = np.array([np.nan if q.confidence is None else q.confidence for q in questions], dtype=float)
        self.confidence = np.asarray(confidence, dtype=float).reshape(n)


def _evaluate(data: _Arrays, thresholds: Thresholds) -> Metrics:
    best = data.best
    with np.errstate(invalid="ignore"):  # a question with no hits: -inf - -inf, never "close"
        close = (data.scores >= thresholds.clarify) & (best[:, None] - data.scores < thresholds.margin)
    # Only the first max_suggestions close entries are offered, as in decide().
    offered = close & (np.cumsum(close, axis=1) <= thresholds.max_suggestions)
    clarify = (best >= thresholds.clarify) & (offered.sum(axis=1) >= 2)
    confident = best >= thresholds.answer
    if thresholds.confidence is not None:
        known = ~np.isnan(data.confidence)
        confident = np.where(known, np.nan_to_num(data.confidence, nan=-1.0) >= thresholds.confidence, confident)
    answer = ~clarify & confident
    right = answer & data.correct[:, 0]
    wrong = answer & ~data.correct[:, 0]
    helpful = clarify & (offered & data.correct).any(axis=1)
    n, in_scope = len(best), int(data.in_scope.sum())
    hits = int(right.sum() + helpful.sum())
    predicted = int(answer.sum() + helpful.sum())
    precision = hits / predicted if predicted else 1.0
    recall = hits / in_scope if in_scope else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out_of_scope = ~data.in_scope
    return Metrics(
        questions=n,
        in_scope=in_scope,
        answered=int(answer.sum()),
        right_answers=int(right.sum()),
        wrong_answers=int(wrong.sum()),
        clarified=int(clarify.sum()),
        helpful_clarifications=int(helpful.sum()),
        precision=precision,
        recall=recall,
        f1=f1,
        wrong_rate=int(wrong.sum()) / n if n else 0.0,
        clarify_rate=int(clarify.sum()) / n if n else 0.0,
        out_of_scope_handled=float((~answer[out_of_scope]).mean()) if out_of_scope.any() else 1.0,
    )


def thresholds_evaluate(questions: list[ScoredQuestion], thresholds: Thresholds) -> Metrics:
    """How these thresholds decide these questions (e.g. a test set after calibrating on another).
    With a confidence model, each question's confidence is the model's reading of its features
    (the stored ``confidence`` where it has none, or not all the model reads)."""
    depth = max((len(q.scores) for q in questions), default=1) or 1
    confidence = None
    if thresholds.uses_confidence:
        model = thresholds.confidence_model
        confidence = np.array(
            [
                model.probability(q.features)
                if q.features is not None and all(name in q.features for name in model.features)
                else (np.nan if q.confidence is None else q.confidence)
                for q in questions
            ],
            dtype=float,
        )
    return _evaluate(_Arrays(questions, depth, confidence), thresholds)


def thresholds_calibrate(
    questions: list[ScoredQuestion],
    *,
    language: str,
    max_wrong_rate: float = 0.05,
    max_clarify_rate: float = 0.10,
    max_suggestions: int = 3,
    cap_confidence: float = CAP_CONFIDENCE,
) -> Calibration:
    """The thresholds maximising F1 with the wrong-answer rate <= ``max_wrong_rate`` (its upper
    bound at ``cap_confidence``) and suggestion lists on at most ``max_clarify_rate`` of the
    questions. Ties go to the higher precision, then the higher answer threshold. With no feasible
    point, the one with the fewest wrong answers."""
    if not questions:
        raise ValueError("no labelled questions to calibrate on")
    depth = max(max(len(q.scores) for q in questions), 1)
    data = _Arrays(questions, depth)
    finite = data.best[np.isfinite(data.best)]
    # Every distinct best score (to 3 decimals) is a place where the decisions change.
    candidates = np.unique(np.round(finite, 3)) if len(finite) else np.array([1.0])
    # ... and one above them all: answering nothing is a candidate too.
    candidates = np.append(candidates, min(candidates.max() + 0.001, 1.0))
    grid = (
        Thresholds(
            language=language,
            answer=float(answer),
            clarify=float(max(0.0, answer - below)),
            margin=margin,
            max_suggestions=max_suggestions,
        )
        for answer in candidates
        for below in CLARIFY_BELOW_ANSWER
        for margin in MARGINS
        # Without a margin nothing is ever clarified: one candidate is enough.
        if not (margin == 0.0 and below > 0.0)
    )
    chosen, metrics, feasible, count = thresholds_search(
        data,
        grid,
        max_wrong_rate=max_wrong_rate,
        max_clarify_rate=max_clarify_rate,
        tie=lambda t: t.answer,
        cap_confidence=cap_confidence,
    )
    return Calibration(thresholds=chosen, metrics=metrics, feasible=feasible, candidates=count)


def thresholds_search(
    data: _Arrays,
    grid,
    *,
    max_wrong_rate: float,
    max_clarify_rate: float,
    tie,
    cap_confidence: float = CAP_CONFIDENCE,
) -> tuple[Thresholds, Metrics, bool, int]:
    """The candidate thresholds of ``grid`` with the best F1 under the caps (the wrong-answer rate's
    upper bound at ``cap_confidence``; ties: higher precision, then higher ``tie(thresholds)``), its
    metrics, whether it met the caps (if none did, the one with the fewest wrong answers), and how
    many candidates were tried."""
    best_key, best, safest_key, safest, count = None, None, None, None, 0
    for thresholds in grid:
        metrics = _evaluate(data, thresholds)
        count += 1
        wrong = wrong_rate_bound(metrics.wrong_rate, metrics.questions, cap_confidence)
        if wrong <= max_wrong_rate and metrics.clarify_rate <= max_clarify_rate:
            key = (metrics.f1, metrics.precision, tie(thresholds))
            if best_key is None or key > best_key:
                best_key, best = key, (thresholds, metrics)
        safe_key = (-metrics.wrong_rate, metrics.f1)
        if safest_key is None or safe_key > safest_key:
            safest_key, safest = safe_key, (thresholds, metrics)
    (chosen, metrics), feasible = (best, True) if best is not None else (safest, False)
    return chosen, metrics, feasible, count

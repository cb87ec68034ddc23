"""Fitting the answer-confidence model (chatbot.confidence) and its threshold on labelled questions.

The model learns P(the best retrieved entry is right) from each question's retrieval features: a
right answer is an in-scope question whose best entry is an expected one; an out-of-scope question
or a wrong best entry is not. Its threshold, with the "did you mean" threshold and margin, is chosen
as chatbot.evaluation.calibration chooses the cosine thresholds (maximum F1 under the caps on wrong
answers and suggestion lists), but on **out-of-fold** predictions: each question's confidence comes
from a model that did not see it, so the reported metrics are what the fitted model should do on
new questions, not what it does on the questions it learned from. The model used live is then
refitted on all of them.

Given the questions' vectors, a second model also reads how near each question comes to the
labelled out-of-scope ones (chatbot.confidence.OUT_OF_SCOPE_FEATURE, each measured leaving itself
out), and is kept when its out-of-fold F1 is the higher.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from chatbot.confidence import OUT_OF_SCOPE_FEATURE, ConfidenceModel, unit_rows
from chatbot.decisions import Thresholds
from chatbot.evaluation.calibration import (
    CAP_CONFIDENCE,
    MARGINS,
    Metrics,
    ScoredQuestion,
    _Arrays,
    thresholds_search,
)

MIN_EACH_CLASS = 20  # right answers, and wrong-or-out-of-scope ones, needed to fit
MIN_OUT_OF_SCOPE_EXAMPLES = 20  # labelled out-of-scope questions needed to learn from nearness to them
FOLDS = 5
CONFIDENCE_STEPS = 200  # candidate confidence thresholds (quantiles of the predictions)
CLARIFY_STEPS = 12  # candidate "did you mean" thresholds (quantiles of the best score)


class NotEnoughQuestions(ValueError):
    """Too few labelled questions of one kind to fit a confidence model."""


@dataclass(frozen=True)
class ConfidenceCalibration:
    """The fitted model with its thresholds, and what it achieved out of fold."""

    thresholds: Thresholds  # confidence threshold + model; answer (the score rule) as given
    metrics: Metrics  # out-of-fold
    feasible: bool
    candidates: int
    auc: float  # ROC AUC of the out-of-fold confidence for "the best entry is right"
    cosine_auc: float  # ... of the best cosine, on the same questions
    questions: int  # with features (the ones it learned from)
    # The out-of-scope questions (indices into the questions) whose nearness the model reads; () if none.
    examples: tuple[int, ...] = ()
    without_examples: Metrics | None = None  # out of fold, the model fitted without that nearness


def _labels(questions: list[ScoredQuestion]) -> np.ndarray:
    return np.array([q.in_scope and bool(q.correct) and q.correct[0] for q in questions], dtype=int)


def out_of_scope_nearness(vectors: np.ndarray, examples: list[int], chunk: int = 4096) -> np.ndarray:
    """OUT_OF_SCOPE_FEATURE for every row of ``vectors`` against the rows ``examples`` of it,
    leaving each example itself out (its nearness to the others, as a new question would see them).
    Rows need not be of unit length: this is a cosine."""
    vectors = unit_rows(vectors)
    pool = vectors[examples]
    nearness = np.empty(len(vectors), dtype=np.float64)
    position = {row: column for column, row in enumerate(examples)}
    for start in range(0, len(vectors), chunk):
        similarities = vectors[start : start + chunk] @ pool.T
        for row in range(start, min(start + chunk, len(vectors))):
            if row in position:
                similarities[row - start, position[row]] = -np.inf
        nearness[start : start + chunk] = similarities.max(axis=1)
    return nearness


@dataclass(frozen=True)
class _Fit:
    thresholds: Thresholds
    metrics: Metrics
    feasible: bool
    candidates: int
    auc: float


def confidence_calibrate(
    questions: list[ScoredQuestion],
    *,
    score_thresholds: Thresholds,
    embedder: str,
    vectors: np.ndarray | None = None,
    max_wrong_rate: float = 0.05,
    max_clarify_rate: float = 0.10,
    cap_confidence: float = CAP_CONFIDENCE,
    seed: int = 0,
) -> ConfidenceCalibration:
    """Fit the model on ``questions`` (those with features), choose its threshold and the clarify
    threshold and margin under the caps (the wrong-answer cap kept at ``cap_confidence``);
    ``score_thresholds`` (the calibrated score rule) keeps its answer threshold for questions the
    model cannot read. Raises NotEnoughQuestions when either class has fewer than MIN_EACH_CLASS
    questions.

    ``vectors`` (one row per question, as live search embeds them): with at least
    MIN_OUT_OF_SCOPE_EXAMPLES out-of-scope questions among them, a second model also reads each
    question's nearness to those (OUT_OF_SCOPE_FEATURE, measured leaving the question itself out),
    and is the one returned when its out-of-fold F1 is higher; ``examples`` then lists the
    questions it measures against, and its ``examples`` id is left for the caller to fill in
    once it has stored them."""
    from sklearn.metrics import roc_auc_score

    rows = [number for number, q in enumerate(questions) if q.features is not None and q.scores]
    usable = [questions[number] for number in rows]
    labels = _labels(usable)
    right, other = int(labels.sum()), int(len(labels) - labels.sum())
    if min(right, other) < MIN_EACH_CLASS:
        raise NotEnoughQuestions(
            f"{right} questions with a right best entry and {other} out of scope or wrong: "
            f"need {MIN_EACH_CLASS} of each to fit a confidence model"
        )
    # A feature of the current model's examples is measured again below, each question left out.
    names = tuple(name for name in usable[0].features if name != OUT_OF_SCOPE_FEATURE)
    x = np.array([[q.features[name] for name in names] for q in usable], dtype=float)
    common = {
        "questions": questions,
        "rows": rows,
        "labels": labels,
        "score_thresholds": score_thresholds,
        "embedder": embedder,
        "max_wrong_rate": max_wrong_rate,
        "max_clarify_rate": max_clarify_rate,
        "cap_confidence": cap_confidence,
        "seed": seed,
    }
    plain = _fit(x, names, **common)
    chosen, examples, without = plain, (), None
    out_of_scope = [number for number, q in enumerate(questions) if not q.in_scope]
    if vectors is not None and len(out_of_scope) >= MIN_OUT_OF_SCOPE_EXAMPLES:
        if len(vectors) != len(questions):
            raise ValueError(f"{len(vectors)} vectors for {len(questions)} questions")
        nearness = out_of_scope_nearness(vectors, out_of_scope)
        near = _fit(np.column_stack([x, nearness[rows]]), (*names, OUT_OF_SCOPE_FEATURE), **common)
        if near.feasible and (near.metrics.f1 > plain.metrics.f1 or not plain.feasible):
            chosen, examples, without = near, tuple(out_of_scope), plain.metrics
    return ConfidenceCalibration(
        thresholds=chosen.thresholds,
        metrics=chosen.metrics,
        feasible=chosen.feasible,
        candidates=chosen.candidates,
        auc=chosen.auc,
        cosine_auc=float(roc_auc_score(labels, [q.scores[0] for q in usable])),
        questions=len(usable),
        examples=examples,
        without_examples=without,
    )


def _fit(
    x: np.ndarray,
    names: tuple[str, ...],
    *,
    questions: list[ScoredQuestion],
    rows: list[int],
    labels: np.ndarray,
    score_thresholds: Thresholds,
    embedder: str,
    max_wrong_rate: float,
    max_clarify_rate: float,
    cap_confidence: float,
    seed: int,
) -> _Fit:
    """One logistic model over the columns ``names`` of ``x`` (the rows ``rows`` of ``questions``),
    its thresholds chosen on out-of-fold predictions, then refitted on all of them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def pipeline():
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))

    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    out_of_fold = cross_val_predict(pipeline(), x, labels, cv=folds, method="predict_proba")[:, 1]
    confidence = np.full(len(questions), np.nan)
    confidence[rows] = out_of_fold

    depth = max(len(q.scores) for q in questions)
    data = _Arrays(questions, depth, confidence)
    levels = np.unique(np.round(np.quantile(out_of_fold, np.linspace(0, 1, CONFIDENCE_STEPS + 1)), 4))
    levels = np.append(levels, 1.001)  # answering nothing by confidence is a candidate too
    best_scores = data.best[np.isfinite(data.best)]
    clarify_levels = np.unique(np.round(np.quantile(best_scores, np.linspace(0.5, 1, CLARIFY_STEPS)), 3))
    # (clarify, margin) pairs; margin 0 never clarifies, so one such pair is enough.
    clarify_rules = [(1.0, 0.0)] + [(c, m) for c in clarify_levels for m in MARGINS if m > 0]
    grid = (
        Thresholds(
            language=score_thresholds.language,
            answer=score_thresholds.answer,
            clarify=float(clarify),
            margin=margin,
            max_suggestions=score_thresholds.max_suggestions,
            confidence=float(level),
        )
        for clarify, margin in clarify_rules
        for level in levels
    )
    chosen, metrics, feasible, count = thresholds_search(
        data,
        grid,
        max_wrong_rate=max_wrong_rate,
        max_clarify_rate=max_clarify_rate,
        tie=lambda t: t.confidence,
        cap_confidence=cap_confidence,
    )

    fitted = pipeline().fit(x, labels)
    scaler, logistic = fitted[0], fitted[-1]
    model = ConfidenceModel(
        features=names,
        mean=tuple(float(v) for v in scaler.mean_),
        # A constant feature has scale 0 in sklearn's StandardScaler (it divides by 1 instead).
        scale=tuple(float(v) if v > 0 else 1.0 for v in scaler.scale_),
        coef=tuple(float(v) for v in logistic.coef_[0]),
        intercept=float(logistic.intercept_[0]),
        embedder=embedder,
    )
    return _Fit(
        thresholds=replace(chosen, confidence_model=model),
        metrics=metrics,
        feasible=feasible,
        candidates=count,
        auc=float(roc_auc_score(labels, out_of_fold)),
    )

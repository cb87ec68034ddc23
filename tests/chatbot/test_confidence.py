"""The answer-confidence model: its numpy reading equals scikit-learn's, it survives storage and
refuses bad values, decide() and the vectorised calibration agree on it, and fitting picks a model
that beats the score where the score cannot separate."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
from django.core.exceptions import ValidationError

from chatbot.confidence import ConfidenceModel
from chatbot.decisions import Kind, Thresholds, decide
from chatbot.evaluation.calibration import ScoredQuestion, thresholds_evaluate
from chatbot.evaluation.confidence_fit import NotEnoughQuestions, confidence_calibrate

MODEL = ConfidenceModel(
    features=("top1", "margin"), mean=(0.7, 0.1), scale=(0.1, 0.05), coef=(2.0, 1.0), intercept=-0.5, embedder="e"
)


def test_probability_equals_scikit_learns():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=300) > 0).astype(int)
    fitted = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    model = ConfidenceModel(
        features=("a", "b", "c"),
        mean=tuple(fitted[0].mean_),
        scale=tuple(fitted[0].scale_),
        coef=tuple(fitted[-1].coef_[0]),
        intercept=float(fitted[-1].intercept_[0]),
        embedder="e",
    )
    expected = fitted.predict_proba(x[:20])[:, 1]
    got = [model.probability(dict(zip("abc", row, strict=True))) for row in x[:20]]
    assert got == pytest.approx(expected, abs=1e-9)


def test_extreme_inputs_give_probabilities_not_overflows():
    assert MODEL.probability({"top1": 1e6, "margin": 0}) == pytest.approx(1.0)
    assert MODEL.probability({"top1": -1e6, "margin": 0}) == pytest.approx(0.0)


def test_storage_round_trip_and_unreadable_values():
    assert ConfidenceModel.from_json(MODEL.as_json()) == MODEL
    assert ConfidenceModel.from_json({}) is None
    assert ConfidenceModel.from_json({**MODEL.as_json(), "coef": [1.0]}) is None  # lengths differ
    assert ConfidenceModel.from_json({**MODEL.as_json(), "scale": [0.0, 1.0]}) is None
    assert ConfidenceModel.from_json({**MODEL.as_json(), "intercept": "nan"}) is None
    assert ConfidenceModel.from_json({"features": ["top1"]}) is None
    with pytest.raises(ValueError):
        ConfidenceModel(features=(), mean=(), scale=(), coef=(), intercept=0.0, embedder="e")


def test_decide_answers_by_confidence_after_the_clarify_rule():
    thresholds = Thresholds("en", answer=0.9, clarify=0.5, margin=0.05, confidence=0.6, confidence_model=MODEL)
    # A low score with a high confidence is answered; a high score with a low confidence is not.
    assert decide([0.55], thresholds, confidence=0.7).kind == Kind.FAQ
    low = decide([0.95], thresholds, confidence=0.3, llm_available=True)
    assert low.kind == Kind.LLM and "0.300 is below 0.600" in low.reason
    # Two close entries still ask "did you mean", whatever the confidence.
    assert decide([0.8, 0.78], thresholds, confidence=0.99).kind == Kind.CLARIFY
    # No confidence for this question (e.g. a follow-up): the score rule.
    assert decide([0.95], thresholds).kind == Kind.FAQ and decide([0.55], thresholds).kind == Kind.HANDOFF
    # A threshold without a model is not a confidence rule.
    assert decide([0.55], Thresholds("en", 0.9, 0.5, 0.05, confidence=0.6), confidence=0.9).kind == Kind.HANDOFF


def test_the_trace_shows_the_confidence_threshold_only_when_it_is_used():
    assert "confidence" not in Thresholds("en", 0.9, 0.5, 0.05).as_dict()
    used = Thresholds("en", 0.9, 0.5, 0.05, confidence=0.6, confidence_model=MODEL).as_dict()
    assert used["confidence"] == 0.6 and "confidence_model" not in used


def _questions(seed: int, n: int = 600) -> list[ScoredQuestion]:
    """Questions whose best score says little about being right, while the feature "signal" does."""
    rng = random.Random(seed)
    questions = []
    for _ in range(n):
        in_scope = rng.random() < 0.6
        right = in_scope and rng.random() < 0.8
        scores = tuple(sorted((rng.uniform(0.5, 0.95) for _ in range(rng.randint(1, 4))), reverse=True))
        correct = (right,) + tuple(False for _ in scores[1:])
        signal = rng.gauss(1.0 if right else -1.0, 0.6)
        features = {"top1": scores[0], "signal": signal, "noise": rng.random()}
        questions.append(ScoredQuestion("en", scores, correct, in_scope, features=features))
    return questions


@pytest.mark.parametrize("seed", [1, 2])
def test_vectorised_evaluation_agrees_with_decide_on_confidence(seed):
    questions = _questions(seed)
    model = ConfidenceModel(features=("signal",), mean=(0.0,), scale=(1.0,), coef=(2.0,), intercept=0.0, embedder="e")
    thresholds = Thresholds("en", 0.8, 0.6, 0.03, confidence=0.7, confidence_model=model)
    answered = right = clarified = 0
    for question in questions:
        decision = decide(list(question.scores), thresholds, confidence=model.probability(question.features))
        answered += decision.kind == Kind.FAQ
        right += decision.kind == Kind.FAQ and question.correct[0]
        clarified += decision.kind == Kind.CLARIFY
    metrics = thresholds_evaluate(questions, thresholds)
    assert (metrics.answered, metrics.right_answers, metrics.clarified) == (answered, right, clarified)


def test_fitting_beats_the_score_when_a_feature_separates():
    from chatbot.evaluation.calibration import thresholds_calibrate

    questions = _questions(3)
    by_score = thresholds_calibrate(questions, language="en", max_wrong_rate=0.05)
    fitted = confidence_calibrate(questions, score_thresholds=by_score.thresholds, embedder="e", max_wrong_rate=0.05)
    assert fitted.feasible and fitted.metrics.wrong_rate <= 0.05
    assert fitted.auc > 0.9 > fitted.cosine_auc
    assert fitted.metrics.f1 > by_score.metrics.f1 + 0.2
    model = fitted.thresholds.confidence_model
    weights = dict(zip(model.features, model.coef, strict=True))
    assert abs(weights["signal"]) > 5 * max(abs(weights["noise"]), abs(weights["top1"]))
    # Questions it never saw are decided as well as the out-of-fold figures said.
    held_out = thresholds_evaluate(_questions(4), fitted.thresholds)
    assert held_out.f1 == pytest.approx(fitted.metrics.f1, abs=0.06) and held_out.wrong_rate <= 0.07
    assert model.embedder == "e" and fitted.thresholds.answer == by_score.thresholds.answer


def test_fitting_needs_both_kinds_of_question():
    questions = [q for q in _questions(5) if q.correct[0]][:200] + [q for q in _questions(5) if not q.correct[0]][:5]
    with pytest.raises(NotEnoughQuestions, match="need 20 of each"):
        confidence_calibrate(questions, score_thresholds=Thresholds("en", 0.8, 0.7, 0.02), embedder="e")


@pytest.mark.django_db
def test_thresholds_row_checks_the_confidence():
    from chatbot.models import DecisionThresholds

    row = DecisionThresholds(language="xx", answer_threshold=0.8, clarify_threshold=0.85, answer_confidence=0.6)
    with pytest.raises(ValidationError, match="no confidence model"):
        row.full_clean()
    row.confidence_model = MODEL.as_json()
    row.full_clean()  # a "did you mean" threshold above the score's is fine when the confidence answers
    row.save()
    thresholds = DecisionThresholds.objects.get(language="xx").as_thresholds()
    assert thresholds.uses_confidence and thresholds.confidence_model == MODEL
    row.answer_confidence = None
    with pytest.raises(ValidationError, match="must not be higher"):
        row.full_clean()
    assert math.isclose(MODEL.probability({"top1": 0.7, "margin": 0.1}), 1 / (1 + math.exp(0.5)))


def _topic_questions(seed: int, n: int = 800, dims: int = 32) -> tuple[list[ScoredQuestion], np.ndarray]:
    """Questions with vectors: in-scope ones about 12 topics, out-of-scope ones about 5 others. The
    retrieval features barely tell them apart ("signal" is weak, the best score says nothing); what
    a question is about does."""
    topics = np.random.default_rng(0).normal(size=(17, dims))  # the same topics for every seed
    rng = np.random.default_rng(seed)
    questions, vectors = [], []
    for _ in range(n):
        in_scope = rng.random() < 0.6
        right = bool(in_scope and rng.random() < 0.85)
        topic = topics[rng.integers(0, 12) if in_scope else rng.integers(12, 17)]
        vector = topic + rng.normal(scale=0.4, size=dims)
        vectors.append(vector / np.linalg.norm(vector))
        scores = tuple(sorted(rng.uniform(0.5, 0.95, size=rng.integers(1, 4)).tolist(), reverse=True))
        features = {"top1": scores[0], "signal": rng.normal(0.5 if right else -0.5, 1.0)}
        questions.append(ScoredQuestion("en", scores, (right,) + (False,) * (len(scores) - 1), in_scope, features))
    return questions, np.array(vectors, dtype=np.float32)


def test_out_of_scope_nearness_leaves_each_example_out():
    from chatbot.evaluation.confidence_fit import out_of_scope_nearness

    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[7] = vectors[3]  # two identical examples: each is the other's nearest, at 1.0
    examples = [3, 7, 10, 20, 21]
    nearness = out_of_scope_nearness(vectors, examples, chunk=16)  # chunks must not change anything
    for row in range(len(vectors)):
        others = [example for example in examples if example != row]
        assert nearness[row] == pytest.approx(float((vectors[others] @ vectors[row]).max()), abs=1e-6)
    assert nearness[3] == pytest.approx(1.0, abs=1e-6) and nearness[7] == pytest.approx(1.0, abs=1e-6)
    assert nearness[10] < 1.0


def test_fitting_reads_nearness_to_out_of_scope_questions_when_it_helps():
    from chatbot.confidence import OUT_OF_SCOPE_FEATURE, out_of_scope_nearest

    questions, vectors = _topic_questions(1)
    by_score = Thresholds("en", 0.8, 0.7, 0.02)
    plain = confidence_calibrate(questions, score_thresholds=by_score, embedder="e")
    near = confidence_calibrate(questions, score_thresholds=by_score, embedder="e", vectors=vectors)
    assert plain.examples == () and plain.without_examples is None
    out_of_scope = [number for number, q in enumerate(questions) if not q.in_scope]
    assert near.examples == tuple(out_of_scope)
    assert near.without_examples == plain.metrics
    assert near.feasible and near.metrics.f1 > plain.metrics.f1 + 0.1 and near.auc > plain.auc
    model = near.thresholds.confidence_model
    assert model.features == ("top1", "signal", OUT_OF_SCOPE_FEATURE) and model.examples is None

    # New questions, with the nearness measured against the stored examples as live chat does:
    # decided about as well as the out-of-fold figures said, and better than without.
    fresh, fresh_vectors = _topic_questions(2)
    examples = vectors[list(near.examples)]
    measured = [
        ScoredQuestion(
            q.language,
            q.scores,
            q.correct,
            q.in_scope,
            {**q.features, OUT_OF_SCOPE_FEATURE: out_of_scope_nearest(examples, vector)[0]},
        )
        for q, vector in zip(fresh, fresh_vectors, strict=True)
    ]
    held_out = thresholds_evaluate(measured, near.thresholds)
    assert held_out.f1 == pytest.approx(near.metrics.f1, abs=0.06) and held_out.wrong_rate <= 0.07
    assert held_out.f1 > thresholds_evaluate(fresh, plain.thresholds).f1 + 0.1
    # Questions without the nearness (none stored for them either) are decided by the score rule.
    by_score_rule = thresholds_evaluate(fresh, dataclasses.replace(near.thresholds, confidence=None))
    assert thresholds_evaluate(fresh, near.thresholds) == by_score_rule


def test_fitting_ignores_nearness_with_too_few_out_of_scope_questions():
    questions, vectors = _topic_questions(3)
    kept = [number for number, q in enumerate(questions) if q.in_scope or number % 40 == 0]
    few = [questions[number] for number in kept]
    assert 0 < sum(not q.in_scope for q in few) < 20
    fitted = confidence_calibrate(
        few, score_thresholds=Thresholds("en", 0.8, 0.7, 0.02), embedder="e", vectors=vectors[kept]
    )
    assert fitted.examples == () and "oos_similarity" not in fitted.thresholds.confidence_model.features
    with pytest.raises(ValueError, match="vectors for"):
        confidence_calibrate(
            questions, score_thresholds=Thresholds("en", 0.8, 0.7, 0.02), embedder="e", vectors=vectors[:10]
        )

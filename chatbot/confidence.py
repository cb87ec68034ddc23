"""The answer confidence: a small logistic model over a question's retrieval features
(kb.retrieval_features) that gives P(the best entry is a right answer). It separates right answers
from out-of-scope questions and wrong entries better than the best cosine alone (ROC AUC 0.946
against 0.856 on BANKING77-OOS, bench/bench_oos_signal.py).

``kb_calibrate`` fits it on labelled questions (chatbot.evaluation.confidence_fit) and stores it as
JSON with the language's DecisionThresholds; live chat only evaluates it, with numpy (a dot
product: no scikit-learn in the web process).

Its features are measured in one embedder's space, so a model records the embedder it was fitted
with, and a process whose embedder differs (a tuned or replaced model) does not use it: the decision
falls back to the cosine thresholds until kb_calibrate is run again.

It may also read how near the question comes to labelled out-of-scope questions
(OUT_OF_SCOPE_FEATURE, over chatbot.models.OutOfScopeExamples): retrieval features describe the
knowledge base's side only, and a question about a topic the FAQ does not cover can sit as close to
an entry as a right one does; being closer still to a question known to be out of scope tells them
apart. On BANKING77-OOS it took the test F1 from 0.839 to 0.871 (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

OUT_OF_SCOPE_FEATURE = "oos_similarity"  # cosine to the nearest labelled out-of-scope question


@dataclass(frozen=True)
class ConfidenceModel:
    """A standardised logistic regression: P = sigmoid(intercept + sum(coef * (x - mean) / scale))."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    embedder: str  # the embedder (kb.embedders name) whose space the features were measured in
    # The OutOfScopeExamples row OUT_OF_SCOPE_FEATURE is measured against, when the model reads it
    # (kb_calibrate names it once it has stored them).
    examples: int | None = None

    def __post_init__(self):
        sizes = {len(self.features), len(self.mean), len(self.scale), len(self.coef)}
        if len(sizes) != 1 or not self.features:
            raise ValueError("features, mean, scale and coef must be non-empty and of one length")
        numbers = (*self.mean, *self.scale, *self.coef, self.intercept)
        if not all(math.isfinite(value) for value in numbers) or any(value <= 0 for value in self.scale):
            raise ValueError("coefficients must be finite and scales positive")

    def probability(self, values: Mapping[str, float]) -> float:
        """P(the best entry is right) for a question's features (named as in ``features``)."""
        z = self.intercept
        for name, mean, scale, coef in zip(self.features, self.mean, self.scale, self.coef, strict=True):
            z += coef * (float(values[name]) - mean) / scale
        # Written so that neither branch overflows for a large |z|.
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        exp = math.exp(z)
        return exp / (1.0 + exp)

    def as_json(self) -> dict[str, Any]:
        """As stored in DecisionThresholds.confidence_model."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> ConfidenceModel | None:
        """The model stored as ``data``; None when there is none or it cannot be read (logged:
        a hand-edited or truncated value must not stop the bot answering by its cosine thresholds)."""
        if not data:
            return None
        try:
            return cls(
                features=tuple(str(name) for name in data["features"]),
                mean=tuple(float(value) for value in data["mean"]),
                scale=tuple(float(value) for value in data["scale"]),
                coef=tuple(float(value) for value in data["coef"]),
                intercept=float(data["intercept"]),
                embedder=str(data["embedder"]),
                examples=None if data.get("examples") is None else int(data["examples"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("ignoring an unreadable answer-confidence model: %s", exc)
            return None


def out_of_scope_nearest(examples: np.ndarray, query: np.ndarray) -> tuple[float, int]:
    """OUT_OF_SCOPE_FEATURE, the cosine of the ``query`` vector to the nearest row of ``examples``
    (unit vectors of labelled out-of-scope questions, in the same space), and that row. The query
    need not be of unit length (the routed embedder scales its questions so that their dot product
    with a phrasing is the weighted cosine)."""
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    similarities = examples @ query
    row = int(similarities.argmax())
    return float(similarities[row]) / max(float(np.linalg.norm(query)), 1e-12), row


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` with every non-zero row scaled to unit length (float32)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

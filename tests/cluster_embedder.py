"""A deterministic embedder for entry-classifier tests: "topic 3 #17" is topic 3's direction plus
noise seeded by the whole text, so one topic's texts form a wide cloud. A phrasing's nearest
neighbour then often belongs to another topic while a linear classifier over all of a topic's
phrasings recovers the direction: the case the entry classifier (kb.entry_head) is for, made
certain. Selected with KB_EMBEDDER=tests.cluster_embedder.ClusterEmbedder."""

from __future__ import annotations

import hashlib
import re

import numpy as np

DIMENSION = 24
NOISE = 1.6
_TOPIC = re.compile(r"topic (\d+)")


def topic_vector(topic: int) -> np.ndarray:
    """The unit direction of a topic (the same in every process)."""
    rng = np.random.default_rng(1000 + topic)
    vector = rng.standard_normal(DIMENSION)
    return vector / np.linalg.norm(vector)


class ClusterEmbedder:
    """Unit vectors; a text without "topic N" gets pure noise."""

    name = "cluster-test"
    dimension = DIMENSION

    def _one(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        noise = np.random.default_rng(seed).standard_normal(DIMENSION) / np.sqrt(DIMENSION)
        match = _TOPIC.search(text)
        vector = NOISE * noise + (topic_vector(int(match.group(1))) if match else 0)
        return vector / np.linalg.norm(vector)

    def encode(self, texts: list[str]) -> np.ndarray:
        """One row per text."""
        return np.array([self._one(text) for text in texts], dtype=np.float32).reshape(len(texts), DIMENSION)

    def encode_query(self, text: str) -> np.ndarray:
        """As a phrasing."""
        return self.encode([text])[0]

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """As phrasings."""
        return self.encode(texts)

    def can_read(self, text: str) -> bool:
        """Everything."""
        return bool(text.strip())


CLEAR_NOISE = 0.3


def clear_view(texts: list[str]) -> np.ndarray:
    """What a second, better model sees of ``texts``: the topic far more clearly (seeded per text)."""
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(f"second {text}".encode()).digest()[:8], "little")
        match = _TOPIC.search(text)
        direction = topic_vector(int(match.group(1))) if match else 0
        rows.append(direction + CLEAR_NOISE * np.random.default_rng(seed).standard_normal(DIMENSION))
    rows = np.array(rows, dtype=np.float32).reshape(len(texts), DIMENSION)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class TwoViewClusterEmbedder(ClusterEmbedder):
    """ClusterEmbedder whose entry classifier may also read :func:`clear_view` (as the language-routed
    embedder's may read USE beside MiniLM): KB_ENTRY_CLASSIFIER_INPUT "both" and "gated" then learn
    something the question's own vector lacks."""

    name = "cluster-two-view-test"

    def phrasing_head_rows(self, vectors, texts, *, reads="both"):
        """Rows as the classifier reads them; "both" adds the clear view."""
        rows = vectors if reads == "question" else np.hstack([vectors, clear_view(texts)])
        return np.ascontiguousarray(rows, dtype=np.float32), vectors, np.arange(len(vectors))

    def head_inputs(self, texts, queries, *, reads="both"):
        """A question's input: its vector, and for "both" the clear view beside it."""
        self.clear_view_calls = getattr(self, "clear_view_calls", 0) + (reads != "question")
        return queries if reads == "question" else np.hstack([queries, clear_view(texts)])

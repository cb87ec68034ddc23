"""Gap mining: the recent questions the FAQ could not answer (the LLM answered, the hand-off was
offered, or the customer gave the reply a thumbs-down), grouped into clusters of
similar questions, biggest first, per language, so an editor sees which entries are missing.

Questions are embedded by the active model version's query embedder (English by MiniLM, Chinese by
the multilingual USE) and clustered per language by scikit-learn's agglomerative clustering on
cosine distance (average linkage): no number of clusters to guess, and a distance an editor can
read (questions in a cluster are on average at least DISTANCE_MAX apart)."""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from datetime import timedelta

import numpy as np
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from chatbot.models import Message, Role, Source
from kb import services as kb_services
from kb.language import detect_language
from kb.text import text_key
from ops.models import GapCluster, GapRun

WINDOW_DAYS = 30
MAX_QUESTIONS = 3000  # the clustering is quadratic in memory: the most recent ones
DISTANCE_MAX = 0.35  # average cosine distance within a cluster (similarity ≥ 0.65)
EXAMPLES = 10
PHRASING_MAX_CHARS = 500  # kb.models.Variant.text
DRAFT_ANSWER = "(Draft from unanswered questions: write the answer, then publish.)"


def _question_key(text: str) -> str:
    # The same question asked again, whatever its case, spacing or punctuation.
    return " ".join(re.findall(r"\w+", text_key(text)))


def gap_questions(*, days: int = WINDOW_DAYS, limit: int = MAX_QUESTIONS) -> Counter:
    """The customer questions of the last ``days`` the FAQ did not answer, by their words (the
    same question asked again counts again), most recent first up to ``limit``."""
    since = timezone.now() - timedelta(days=days)
    # A customer asking for a person is no gap in the knowledge base: only an offered hand-off is.
    offered = Q(reply__source=Source.HANDOFF) & ~Q(reply__decision__handoff="requested")
    missed = Q(reply__source=Source.LLM) | offered | Q(reply__feedback__value="down")
    texts = (
        Message.objects.filter(role=Role.CUSTOMER, created_at__gte=since)
        .filter(missed)
        .order_by("-created_at")
        .values_list("text", flat=True)[:limit]
    )
    counted: Counter = Counter()
    first_seen: dict[str, str] = {}
    for text in texts:
        key = _question_key(text)
        first_seen.setdefault(key, text.strip())
        counted[first_seen[key]] += 1
    return counted


def _clusters(vectors: np.ndarray) -> list[list[int]]:
    if len(vectors) == 1:
        return [[0]]
    from sklearn.cluster import AgglomerativeClustering

    labels = AgglomerativeClustering(
        n_clusters=None, distance_threshold=DISTANCE_MAX, metric="cosine", linkage="average"
    ).fit_predict(vectors)
    grouped: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        grouped[int(label)].append(index)
    return list(grouped.values())


def gaps_mine(*, embedder, days: int = WINDOW_DAYS) -> GapRun:
    """Cluster the recent unanswered questions and store the result as the newest run."""
    started = time.perf_counter()
    counted = gap_questions(days=days)
    by_language: dict[str, list[str]] = defaultdict(list)
    for text in counted:
        by_language[detect_language(text)].append(text)
    found = []
    for language, texts in by_language.items():
        vectors = embedder.encode_queries(texts)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms == 0, 1, norms)
        for members in _clusters(vectors):
            centre = vectors[members].mean(axis=0)
            ordered = sorted(members, key=lambda i: (-counted[texts[i]], -float(vectors[i] @ centre)))
            central = max(members, key=lambda i: float(vectors[i] @ centre))
            found.append(
                GapCluster(
                    language=language,
                    size=sum(counted[texts[i]] for i in members),
                    distinct=len(members),
                    representative=texts[central],
                    examples=[texts[i] for i in ordered[:EXAMPLES]],
                )
            )
    with transaction.atomic():
        run = GapRun.objects.create(
            window_days=days, questions=sum(counted.values()), seconds=round(time.perf_counter() - started, 2)
        )
        for cluster in found:
            cluster.run = run
        GapCluster.objects.bulk_create(found)
        GapRun.objects.exclude(pk=run.pk).delete()  # the clusters of older runs go with them
    return run


def gap_draft_entry(*, cluster: GapCluster):
    """An unpublished entry from a cluster: its most central question as the question, the others
    as phrasings, a placeholder answer for the editor to write."""
    if cluster.draft_entry_id:
        return cluster.draft_entry
    # Customers write longer than a phrasing may be: those are left out (the question too, if
    # need be, for the shortest of the others); a cluster of only such texts cannot be drafted.
    fitting = [text for text in cluster.examples if len(text) <= PHRASING_MAX_CHARS]
    if not fitting:
        raise kb_services.EntryInvalid("every question of this cluster is longer than a phrasing may be")
    question = cluster.representative if cluster.representative in fitting else min(fitting, key=len)
    entry = kb_services.entry_create(
        question=question,
        answer=DRAFT_ANSWER,
        language=cluster.language if cluster.language in {"en", "zh"} else "en",
        is_published=False,
        variants=[text for text in fitting if text != question],
    )
    cluster.draft_entry = entry
    cluster.save(update_fields=["draft_entry"])
    return entry

"""Reads from the knowledge base: semantic search over the published index."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from kb.embedders import get_embedder
from kb.models import Entry, IndexVersion
from kb.vector_index import CurrentIndex


def _latest_published_version() -> tuple[int, Path] | None:
    row = IndexVersion.objects.order_by("-id").values_list("id", "filename").first()
    return None if row is None else (row[0], settings.KB_INDEX_DIR / row[1])


current_index = CurrentIndex(
    latest_version=_latest_published_version,
    poll_seconds=lambda: settings.KB_INDEX_POLL_SECONDS,
)


@dataclass(frozen=True)
class EntryHit:
    """One retrieved entry with its best-matching phrasing's cosine score."""

    entry_id: int
    question: str
    answer: str
    language: str
    score: float
    matched_variant_id: int

    def trace(self) -> dict:
        """The part of a hit worth keeping in a transcript."""
        return {"entry_id": self.entry_id, "score": round(self.score, 4), "variant_id": self.matched_variant_id}


@dataclass(frozen=True)
class SearchResult:
    """Entries retrieved for a query, best first, and how the search went."""

    hits: list[EntryHit]
    index_version: int | None
    readable: bool
    timings_ms: dict[str, float] = field(default_factory=dict)


def entry_search(*, query: str, k: int | None = None) -> SearchResult:
    """Top-k published entries for ``query``: every phrasing is searched, scores aggregate per
    entry by their best phrasing."""
    k = k or settings.KB_SEARCH_TOP_K
    embedder = get_embedder()
    if not embedder.can_read(query):
        return SearchResult(hits=[], index_version=None, readable=False)
    started = time.perf_counter()
    vector = embedder.encode_query(query)
    embedded = time.perf_counter()
    index = current_index.get()
    if index is None:
        return SearchResult(hits=[], index_version=None, readable=True)
    best: dict[int, tuple[float, int]] = {}
    # Over-fetch phrasings so that k distinct entries survive the per-entry aggregation.
    for variant_id, entry_id, score in index.search(vector, k * 8):
        if entry_id not in best or score > best[entry_id][0]:
            best[entry_id] = (score, variant_id)
    searched = time.perf_counter()
    ranked = sorted(best.items(), key=lambda item: item[1][0], reverse=True)
    # The database has the last word: an entry unpublished or deleted since the index was built
    # never answers.
    entries = Entry.objects.filter(id__in=[entry_id for entry_id, _ in ranked], is_published=True).in_bulk()
    hits = [
        EntryHit(
            entry_id=entry_id,
            question=entries[entry_id].question,
            answer=entries[entry_id].answer,
            language=entries[entry_id].language,
            score=score,
            matched_variant_id=variant_id,
        )
        for entry_id, (score, variant_id) in ranked
        if entry_id in entries
    ][:k]
    timings = {"embed": (embedded - started) * 1000, "search": (searched - embedded) * 1000}
    return SearchResult(hits=hits, index_version=index.version, readable=True, timings_ms=timings)


def search_warm_up() -> None:
    """Load the embedder and the current index now, so the first customer does not wait."""
    embedder = get_embedder()
    embedder.encode(["warm up"])
    try:
        current_index.refresh()
    except Exception:  # noqa: BLE001 - no database yet (before migrate) must not stop start-up
        pass

"""Reusable pieces of the retrieval benchmarks: an intent dataset read as a knowledge base, batch
encoding, building the production index (FAISS + BM25) in memory, ranking queries through the
production search step (kb.selectors.index_entries_rank) and scoring the rankings.

No database is used; call :func:`django_setup` first (the embedders read their model settings).
"""

from __future__ import annotations

import csv
import functools
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import DATA

BANKING77 = DATA / "banking77"
OUT_OF_SCOPE = -1  # query_entry_ids value of a question no entry should answer


def django_setup() -> None:
    """Configure Django (settings only, no database) so kb modules and embedders can be used."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    import django

    django.setup()


@dataclass(frozen=True)
class KbSet:
    """A knowledge base and its test questions: entry i (id ``i + 1``) is ``entry_names[i]``;
    phrasing j has variant id ``j + 1``."""

    entry_names: list[str]
    phrasings: list[str]
    phrasing_entry_ids: np.ndarray
    queries: list[str]
    query_entry_ids: np.ndarray  # OUT_OF_SCOPE for a question outside every entry

    @property
    def variant_ids(self) -> np.ndarray:
        """One id per phrasing, 1-based like database ids."""
        return np.arange(1, len(self.phrasings) + 1, dtype=np.int64)


def kb_set_from_rows(phrasing_rows: Iterable[tuple[str, str]], query_rows: Iterable[tuple[str, str]]) -> KbSet:
    """Entries from labelled rows: one entry per label of ``phrasing_rows``, each (text, label) a
    phrasing (repeated texts within an entry stored once, as the KB's unique constraint does);
    a query whose label has no entry is out of scope."""
    phrasing_rows = list(phrasing_rows)
    names = sorted({label for _, label in phrasing_rows})
    entry_id = {name: number for number, name in enumerate(names, start=1)}
    seen: set[tuple[str, str]] = set()
    phrasings, phrasing_entries = [], []
    for text, label in phrasing_rows:
        if (text, label) not in seen:
            seen.add((text, label))
            phrasings.append(text)
            phrasing_entries.append(entry_id[label])
    queries, query_entries = [], []
    for text, label in query_rows:
        queries.append(text)
        query_entries.append(entry_id.get(label, OUT_OF_SCOPE))
    return KbSet(
        entry_names=names,
        phrasings=phrasings,
        phrasing_entry_ids=np.array(phrasing_entries, dtype=np.int64),
        queries=queries,
        query_entry_ids=np.array(query_entries, dtype=np.int64),
    )


def csv_rows(path: Path) -> list[tuple[str, str]]:
    """(text, category) rows of a BANKING77-style CSV (header ``text,category``)."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [(row["text"], row["category"]) for row in csv.DictReader(handle)]


def banking77_load(folder: Path = BANKING77) -> KbSet:
    """BANKING77 as a KB: 77 entries whose phrasings are the training questions; the 3,080 test
    questions are the queries."""
    return kb_set_from_rows(csv_rows(folder / "train.csv"), csv_rows(folder / "test.csv"))


def kb_set_split(kb: KbSet, *, query_share: float = 0.2, seed: int = 0) -> tuple[KbSet, np.ndarray, np.ndarray]:
    """Hold out ``query_share`` of each entry's phrasings as queries (for tuning without touching
    the test set). Returns the split and the phrasing rows (into ``kb.phrasings``) it kept as
    phrasings and as queries, so vectors computed for ``kb`` can be reused."""
    rng = random.Random(seed)
    kept, held = [], []
    for entry_id in np.unique(kb.phrasing_entry_ids):
        rows = np.flatnonzero(kb.phrasing_entry_ids == entry_id).tolist()
        rng.shuffle(rows)
        cut = max(1, round(len(rows) * query_share))
        held.extend(rows[:cut])
        kept.extend(rows[cut:])
    kept_rows, held_rows = np.array(sorted(kept)), np.array(sorted(held))
    split = KbSet(
        entry_names=kb.entry_names,
        phrasings=[kb.phrasings[row] for row in kept_rows],
        phrasing_entry_ids=kb.phrasing_entry_ids[kept_rows],
        queries=[kb.phrasings[row] for row in held_rows],
        query_entry_ids=kb.phrasing_entry_ids[held_rows],
    )
    return split, kept_rows, held_rows


def texts_encode(
    embedder, texts: Sequence[str], *, batch_size: int = 512, queries: bool = False
) -> tuple[np.ndarray, float]:
    """Vectors of ``texts`` by ``embedder.encode`` in batches (``encode_queries`` for questions, as
    the product embeds them), and the seconds it took."""
    started = time.perf_counter()
    encode = embedder.encode_queries if queries else embedder.encode
    parts = [encode(list(texts[start : start + batch_size])) for start in range(0, len(texts), batch_size)]
    vectors = np.vstack(parts) if parts else np.zeros((0, embedder.dimension), np.float32)
    return np.ascontiguousarray(vectors, dtype=np.float32), time.perf_counter() - started


def index_load(
    *,
    vectors: np.ndarray,
    kb: KbSet,
    keyword: bool = True,
    version: int = 1,
    rows: np.ndarray | None = None,
):
    """The production in-memory index (kb.vector_index.LoadedIndex) over ``kb``'s phrasings: the
    FAISS index of the kind settings choose for this size, and the BM25 index of their texts
    (``keyword=False``: dense only). ``rows`` selects phrasings of ``kb`` (default all) and
    ``vectors`` must match the selection."""
    from django.conf import settings

    from kb.keyword import keyword_index_from_texts
    from kb.vector_index import LoadedIndex, build_index, choose_index_kind

    rows = np.arange(len(kb.phrasings)) if rows is None else rows
    variant_ids, entry_ids = kb.variant_ids[rows], kb.phrasing_entry_ids[rows]
    kind = choose_index_kind(
        configured=settings.KB_INDEX_TYPE, vector_count=len(rows), hnsw_threshold=settings.KB_INDEX_HNSW_THRESHOLD
    )
    index = build_index(vectors, variant_ids, vectors.shape[1], kind=kind)
    keyword_index = None
    if keyword:
        texts = [kb.phrasings[row] for row in rows]
        keyword_index = keyword_index_from_texts(texts=texts, variant_ids=variant_ids, entry_ids=entry_ids)
    return LoadedIndex.create(
        version=version, index=index, variant_ids=variant_ids, entry_ids=entry_ids, keyword=keyword_index
    )


@dataclass(frozen=True)
class Ranked:
    """Each query's ranked entries (kb.selectors.FusedEntry lists), per-query latency, and which
    queries the entry classifier's re-ranking classifier ranked (kb.entry_head.EntryHead.rerank)."""

    entries: list[list]
    latency_ms: np.ndarray
    reranked: np.ndarray | None = None


@dataclass(frozen=True)
class RankConfig:
    """One way of ranking: an index (:func:`index_load`), the queries' vectors for it (None =
    keyword search alone), hybrid or not (or a function of the question, like
    kb.selectors.query_hybrid), and the fusion (kb.selectors.Fusion; None = default)."""

    index: object
    vectors: np.ndarray | None
    hybrid: bool | Callable[[str], bool]
    fusion: object = None
    # What the index's entry classifier reads per query (kb.entry_head.question_head_inputs);
    # None = the vectors themselves.
    head_inputs: np.ndarray | None = None
    # What its re-ranking classifier reads per query (KB_ENTRY_CLASSIFIER_INPUT "gated").
    rerank_inputs: np.ndarray | None = None


def queries_rank(
    *, index, queries: Sequence[str], vectors: np.ndarray | None, k: int = 10, hybrid: bool, fusion=None
) -> Ranked:
    """Rank every query through kb.selectors.index_entries_rank, the step entry_search runs after
    embedding (dense search, BM25, fusion, dense scores of keyword-only entries). ``vectors`` None
    = keyword search alone. Latency covers tokenizing (when keywords are used) and that step."""
    config = RankConfig(index=index, vectors=vectors, hybrid=hybrid, fusion=fusion)
    return queries_rank_many(configs=[config], queries=queries, k=k)[0]


def queries_rank_many(*, configs: Sequence[RankConfig], queries: Sequence[str], k: int = 10) -> list[Ranked]:
    """:func:`queries_rank` for several configurations, taking turns query by query, so that a
    shared machine's load spreads evenly over their latencies."""
    from kb.keyword import text_tokenize
    from kb.selectors import index_entries_rank

    ranked: list[list] = [[] for _ in configs]
    latency = np.zeros((len(configs), len(queries)))
    reranked = np.zeros((len(configs), len(queries)), dtype=bool)
    for number, query in enumerate(queries):
        for slot, config in enumerate(configs):
            started = time.perf_counter()
            hybrid = config.hybrid(query) if callable(config.hybrid) else config.hybrid
            tokens = text_tokenize(query) if hybrid else []
            vector = None if config.vectors is None else config.vectors[number]
            timings: dict[str, float] = {}
            rerank_input = None
            if config.rerank_inputs is not None:
                rerank_input = functools.partial(config.rerank_inputs.__getitem__, number)
            ranked[slot].append(
                index_entries_rank(
                    index=config.index,
                    vector=vector,
                    tokens=tokens,
                    k=k,
                    hybrid=hybrid,
                    fusion=config.fusion,
                    head_input=None if config.head_inputs is None else config.head_inputs[number],
                    rerank_input=rerank_input,
                    timings_ms=timings,
                )
            )
            latency[slot, number] = (time.perf_counter() - started) * 1000
            reranked[slot, number] = "rerank" in timings
    return [
        Ranked(entries=ranked[slot], latency_ms=latency[slot], reranked=reranked[slot]) for slot in range(len(configs))
    ]


def rankings_score(rankings: Sequence[Sequence], expected: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy, recall@5 and MRR (over the ranked list given, e.g. top 10) of in-scope
    queries, counting entries (after per-entry aggregation)."""
    top1 = recall5 = reciprocal = 0.0
    scored = 0
    for ranking, entry_id in zip(rankings, expected.tolist(), strict=True):
        if entry_id == OUT_OF_SCOPE:
            continue
        scored += 1
        ids = [entry.entry_id for entry in ranking]
        if ids[:1] == [entry_id]:
            top1 += 1
        if entry_id in ids[:5]:
            recall5 += 1
        if entry_id in ids:
            reciprocal += 1 / (ids.index(entry_id) + 1)
    scored = max(scored, 1)
    return {"top1": top1 / scored, "recall5": recall5 / scored, "mrr": reciprocal / scored}


def routed_phrasing_vectors(english: np.ndarray, multilingual: np.ndarray) -> np.ndarray:
    """What kb.embedders.LanguageRoutedEmbedder.encode stores for phrasings, from each model's
    vectors (the benchmark checks a sample against the embedder itself)."""
    return np.ascontiguousarray(np.hstack([english, multilingual]) / np.sqrt(2.0), dtype=np.float32)


def routed_query_vectors(embedder, queries: Sequence[str], english: np.ndarray, multilingual: np.ndarray) -> np.ndarray:
    """What LanguageRoutedEmbedder.encode_query gives each query, from each model's batched
    vectors and the embedder's own per-question weight (checked on a sample by the benchmark)."""
    weights = np.array([embedder.query_weight(query) for query in queries], dtype=np.float32)[:, None]
    both = np.hstack([english * weights, multilingual * (1 - weights)]) * np.sqrt(2.0)
    return np.ascontiguousarray(both, dtype=np.float32)


@dataclass(frozen=True)
class Candidates:
    """One query's search results, enough to rank it with any fusion of depth up to ``depth``:
    each entry's best dense and keyword phrasings, the dense scores of keyword-only entries and
    the question's keyword bound (see kb.selectors.entries_fuse)."""

    dense: list
    keyword: list
    dense_extra: dict
    keyword_bound: float


def candidates_collect(
    *, index, queries: Sequence[str], vectors: np.ndarray, depth: int, tokenize=None
) -> list[Candidates]:
    """Each query's :class:`Candidates`, so that many fusion settings can be scored with
    kb.selectors.entries_fuse without searching again (the ranking is the one index_entries_rank
    returns for the same settings). ``tokenize`` defaults to kb.keyword.text_tokenize; it must
    match how the index's keyword side was built."""
    from kb.keyword import text_tokenize

    tokenize = tokenize or text_tokenize
    collected = []
    for number, query in enumerate(queries):
        tokens = tokenize(query)
        dense = index.dense_candidates(vectors[number], entries=depth)
        keyword = index.keyword_candidates(tokens, entries=depth)
        ranked_densely = {entry_id for _, entry_id, _ in dense}
        keyword_only = [entry_id for _, entry_id, _ in keyword[:depth] if entry_id not in ranked_densely]
        collected.append(
            Candidates(
                dense=dense,
                keyword=keyword,
                dense_extra=index.entries_best_dense(vectors[number], keyword_only),
                keyword_bound=index.keyword.query_bound(tokens),
            )
        )
    return collected


def candidates_rank(candidates: Sequence[Candidates], *, fusion, k: int = 10, dense: bool = True) -> list[list]:
    """Rank precomputed candidates with kb.selectors.entries_fuse: hybrid with ``fusion``, or
    dense alone (``fusion`` None), or keywords alone (``dense`` False)."""
    from kb.selectors import entries_fuse

    if fusion is None:
        return [entries_fuse(c.dense, [], k=k, hybrid=False) for c in candidates]
    return [
        entries_fuse(
            c.dense if dense else [],
            c.keyword,
            k=k,
            hybrid=True,
            fusion=fusion,
            keyword_bound=c.keyword_bound,
            dense_extra=c.dense_extra if dense else None,
        )
        for c in candidates
    ]


def fusions_score(
    candidates: Sequence[Candidates], expected: np.ndarray, fusions: Iterable, *, k: int = 10
) -> list[tuple[object, dict[str, float]]]:
    """(fusion, scores) for each kb.selectors.Fusion over precomputed candidates."""
    return [(fusion, rankings_score(candidates_rank(candidates, fusion=fusion, k=k), expected)) for fusion in fusions]


def top1_correct(rankings: Sequence[Sequence], expected: np.ndarray) -> np.ndarray:
    """Per in-scope query: is its top-ranked entry the expected one."""
    scope = expected != OUT_OF_SCOPE
    firsts = np.array([ranking[0].entry_id if ranking else 0 for ranking in rankings], dtype=np.int64)
    return (firsts == expected)[scope]


def mcnemar(baseline: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Paired comparison of two systems' per-query top-1 correctness: queries the candidate fixes
    and breaks, and the exact two-sided McNemar p-value (is the difference more than chance)."""
    from scipy.stats import binomtest

    fixed = int(np.sum(candidate & ~baseline))
    broken = int(np.sum(baseline & ~candidate))
    p_value = binomtest(fixed, fixed + broken, 0.5).pvalue if fixed + broken else 1.0
    return {"fixed": fixed, "broken": broken, "p_value": float(p_value)}


def demo_kb_load(path: Path) -> tuple[KbSet, list[str]]:
    """A JSON knowledge base in the import format (e.g. kb/fixtures/demo_kb.json): one entry per
    item, its question and variants as phrasings, no queries; and each phrasing's language."""
    import json

    items = json.loads(path.read_text(encoding="utf-8"))
    rows = [(text, item["question"]) for item in items for text in [item["question"], *item.get("variants", [])]]
    languages = [item.get("language", "en") for item in items for _ in [item["question"], *item.get("variants", [])]]
    return kb_set_from_rows(rows, []), languages


def leave_one_out_rank(
    *, kb: KbSet, phrasing_vectors: np.ndarray, query_vectors: np.ndarray, configs: dict, k: int = 10
) -> dict[str, list[list]]:
    """Each phrasing as a question against an index of all the others (a small KB has no test
    set): for each named config ``(hybrid, fusion)``, the rankings in phrasing order. ``hybrid``
    may be a function of the question (e.g. kb.selectors.query_hybrid); ``fusion`` "bm25" ranks
    by keywords alone. Goes through kb.selectors.index_entries_rank like :func:`queries_rank`."""
    from kb.keyword import text_tokenize
    from kb.selectors import index_entries_rank

    rankings: dict[str, list[list]] = {name: [] for name in configs}
    everything = np.arange(len(kb.phrasings))
    for held in everything:
        index = index_load(vectors=phrasing_vectors[everything != held], kb=kb, rows=everything[everything != held])
        question = kb.phrasings[held]
        tokens = text_tokenize(question)
        for name, (hybrid, fusion) in configs.items():
            hybrid = hybrid(question) if callable(hybrid) else hybrid
            keywords_only = fusion == "bm25"
            rankings[name].append(
                index_entries_rank(
                    index=index,
                    vector=None if keywords_only else query_vectors[held],
                    tokens=tokens if hybrid or keywords_only else [],
                    k=k,
                    hybrid=hybrid or keywords_only,
                    fusion=None if keywords_only else fusion,
                )
            )
    return rankings

"""Reads from the knowledge base: search over the published index, dense (FAISS) and optionally
hybrid with BM25 keywords, fused per entry (reciprocal rank fusion or score fusion)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import connection

from kb.embedders import embedder_for, get_embedder, process_model_set
from kb.entry_head import question_head_inputs
from kb.keyword import keyword_warm_up, text_tokenize
from kb.language import detect_language
from kb.models import Entry, IndexVersion, answer_for
from kb.query_batching import query_encode
from kb.retrieval_features import retrieval_features
from kb.vector_index import CurrentIndex, LoadedIndex, PhrasingHit


def _latest_published_version() -> tuple[int, Path, str] | None:
    row = IndexVersion.objects.order_by("-id").values_list("id", "filename", "embedding_model__directory").first()
    return None if row is None else (row[0], settings.KB_INDEX_DIR / row[1], row[2] or "")


def _model_prepare(directory: str) -> None:
    """Load and warm the model version an index is of, then make it this process's (a web process
    serves one index, so its get_embedder() follows the index)."""
    embedder = embedder_for(directory)
    embedder.encode(["warm up"])
    embedder.encode_queries(["warm up"])  # questions may run on another session (KB_QUERY_PRECISION)
    process_model_set(directory)


current_index = CurrentIndex(
    latest_version=_latest_published_version,
    poll_seconds=lambda: settings.KB_INDEX_POLL_SECONDS,
    model_prepare=_model_prepare,
)


@dataclass(frozen=True)
class EntryHit:
    """One retrieved entry. ``score`` is always the dense cosine of its best-matching phrasing
    (``matched_variant_id``; the decision thresholds compare it), also for an entry that only
    keyword search found; 0.0 when the embedder could not read the question (the phrasing is then
    the best keyword match). In hybrid mode ``keyword_score`` is the BM25 score of its best phrasing
    (None when keyword search did not rank it) and ``fused_score`` what the ranking used (see
    :class:`Fusion`); both are None in dense mode. Ranked with the entry classifier
    (kb.entry_head), ``fused_score`` is cosine + weight x log P(entry)."""

    entry_id: int
    question: str
    answer: str
    language: str
    score: float
    matched_variant_id: int
    keyword_score: float | None = None
    fused_score: float | None = None
    translations: dict[str, str] | None = None  # the entry's answers in other languages

    def answer_for(self, language: str) -> str:
        """The answer for a question asked in ``language`` (kb.models.answer_for)."""
        return answer_for(self.answer, self.translations, language)

    def trace(self) -> dict:
        """The part of a hit worth keeping in a transcript."""
        return {
            "entry_id": self.entry_id,
            "score": round(self.score, 4),
            "variant_id": self.matched_variant_id,
            "keyword_score": None if self.keyword_score is None else round(self.keyword_score, 4),
            "fused_score": None if self.fused_score is None else round(self.fused_score, 6),
        }


@dataclass(frozen=True)
class SearchResult:
    """Entries retrieved for a query, best first, and how the search went: ``mode`` is "hybrid" when
    keyword results took part in the ranking, else "dense"."""

    hits: list[EntryHit]
    index_version: int | None
    readable: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    mode: str = "dense"  # "dense", "dense+classifier" (kb.entry_head) or "hybrid"
    # The best hit's retrieval features (kb.retrieval_features), when asked for and the index is flat.
    features: dict[str, float] | None = None
    # The question's vector as the index scores it (its model's space), when the features were computed.
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)


FUSION_METHODS = ("rrf", "score")


@dataclass(frozen=True)
class Fusion:
    """How dense and keyword results combine, over each source's top ``depth`` entries.

    ``rrf`` (reciprocal rank fusion): an entry scores sum(weight / (rrf_k + rank)) over the sources
    ranking it (dense weight 1, keyword ``keyword_weight``); scores are ignored, only ranks count.
    ``score``: dense cosine + ``keyword_weight`` x keyword coverage, where coverage is the entry's
    BM25 score over the most the question's tokens could score (0 to 1, see
    kb.keyword.KeywordIndex.query_bound): a phrasing matching every rare word of the question gets
    the whole bonus, one sharing a common word little."""

    method: str = "rrf"
    rrf_k: float = 60.0
    keyword_weight: float = 1.0
    depth: int = 20

    def __post_init__(self):
        if self.method not in FUSION_METHODS:
            raise ValueError(f"fusion method must be one of {FUSION_METHODS}, not {self.method!r}")

    @classmethod
    def from_settings(cls) -> Fusion:
        """The fusion configured by the KB_HYBRID_* settings."""
        return cls(
            method=settings.KB_HYBRID_FUSION,
            rrf_k=settings.KB_HYBRID_RRF_K,
            keyword_weight=settings.KB_HYBRID_KEYWORD_WEIGHT,
            depth=settings.KB_HYBRID_DEPTH,
        )


@dataclass(frozen=True)
class FusedEntry:
    """One entry after per-entry aggregation and fusion; ``score`` / ``variant_id`` are its best
    dense phrasing (None until filled in when only keyword search found it)."""

    entry_id: int
    score: float | None
    variant_id: int | None
    keyword_score: float | None = None
    keyword_variant_id: int | None = None
    fused_score: float | None = None


def _entries_best(phrasings: Sequence[PhrasingHit]) -> dict[int, tuple[float, int]]:
    """Each entry's best phrasing as (score, variant_id), best entry first: an entry ranks by its
    best phrasing, so twenty near-identical phrasings do not outvote one exact match."""
    best: dict[int, tuple[float, int]] = {}
    for variant_id, entry_id, score in phrasings:
        if entry_id not in best or score > best[entry_id][0]:
            best[entry_id] = (score, variant_id)
    return dict(sorted(best.items(), key=lambda item: (-item[1][0], item[0])))


def entries_fuse(
    dense: Sequence[PhrasingHit],
    keyword: Sequence[PhrasingHit],
    *,
    k: int,
    hybrid: bool,
    fusion: Fusion | None = None,
    keyword_bound: float | None = None,
    dense_extra: Mapping[int, tuple[float, int]] | None = None,
) -> list[FusedEntry]:
    """Top-k entries from phrasing hits ``(variant_id, entry_id, score)`` of each source.

    Each source is aggregated per entry (an entry's rank and score are its best phrasing's).
    Without ``hybrid`` entries rank by dense cosine and ``keyword`` is ignored. With it, the
    candidates are both sources' top ``fusion.depth`` entries, ranked by ``fusion`` (ties: better
    dense score first); if k is larger, other candidates follow (fused score 0). With ``dense``
    empty (an unreadable question) hybrid ranking is keyword ranking.

    Score fusion needs, beside the hits: ``keyword_bound``, the question's
    KeywordIndex.query_bound (default: the best keyword score), and ``dense_extra``, the
    (cosine, variant_id) of keyword candidates that dense search did not rank (missing ones count 0)."""
    dense_best = _entries_best(dense)
    if not hybrid:
        return [FusedEntry(entry_id, score, variant_id) for entry_id, (score, variant_id) in dense_best.items()][:k]
    fusion = fusion or Fusion()
    keyword_best = _entries_best(keyword)
    if fusion.method == "score" and dense_extra:
        dense_best = dict(sorted({**dense_extra, **dense_best}.items(), key=lambda item: (-item[1][0], item[0])))
    fused = _fused_scores(dense_best, keyword_best, fusion, keyword_bound)
    ranked = sorted(
        fused,
        key=lambda entry_id: (
            -fused[entry_id],
            -dense_best.get(entry_id, (-math.inf,))[0],
            -keyword_best.get(entry_id, (-math.inf,))[0],
            entry_id,
        ),
    )
    if len(ranked) < k:
        # Asked for more entries than fusion ranks: the rest follow by dense, then keyword order.
        ranked = list(dict.fromkeys([*ranked, *dense_best, *keyword_best]))
    return [
        FusedEntry(
            entry_id=entry_id,
            score=dense_best[entry_id][0] if entry_id in dense_best else None,
            variant_id=dense_best[entry_id][1] if entry_id in dense_best else None,
            keyword_score=keyword_best[entry_id][0] if entry_id in keyword_best else None,
            keyword_variant_id=keyword_best[entry_id][1] if entry_id in keyword_best else None,
            fused_score=fused.get(entry_id, 0.0),
        )
        for entry_id in ranked[:k]
    ]


def _fused_scores(
    dense_best: dict[int, tuple[float, int]],
    keyword_best: dict[int, tuple[float, int]],
    fusion: Fusion,
    keyword_bound: float | None,
) -> dict[int, float]:
    """Fused score of each candidate (both sources' top ``fusion.depth`` entries); both rankings
    come best first."""
    dense_top = list(dense_best)[: fusion.depth]
    keyword_top = list(keyword_best)[: fusion.depth]
    if fusion.method == "rrf":
        fused: dict[int, float] = {}
        for weight, ranking in ((1.0, dense_top), (fusion.keyword_weight, keyword_top)):
            for rank, entry_id in enumerate(ranking, start=1):
                fused[entry_id] = fused.get(entry_id, 0.0) + weight / (fusion.rrf_k + rank)
        return fused
    bound = keyword_bound or max((score for score, _ in keyword_best.values()), default=0.0) or 1.0
    return {
        entry_id: dense_best.get(entry_id, (0.0,))[0]
        + fusion.keyword_weight * keyword_best.get(entry_id, (0.0,))[0] / bound
        for entry_id in dict.fromkeys([*dense_top, *keyword_top])
    }


def index_entries_rank(
    *,
    index: LoadedIndex,
    vector: np.ndarray | None,
    tokens: Sequence[str],
    k: int,
    hybrid: bool,
    fusion: Fusion | None = None,
    keep: Callable[[set[int]], Collection[int]] | None = None,
    timings_ms: dict[str, float] | None = None,
    scan_scores: np.ndarray | None = None,
    head_input: np.ndarray | None = None,
    head_log_probabilities: np.ndarray | None = None,
    rerank_input: Callable[[], np.ndarray] | None = None,
) -> list[FusedEntry]:
    """The search step shared by live search and the benchmarks: dense and (if ``hybrid`` and the
    index has keyword data) keyword candidates, ``keep`` (which of their entries may answer),
    :func:`entries_fuse`, and the dense score of every entry that only keyword search found
    (computed from its phrasings' stored vectors: before fusion for score fusion, which needs it,
    after it for the returned entries otherwise). ``vector`` None = the embedder cannot read the
    question: keyword results only (if hybrid), with no dense score. ``scan_scores``: the query's
    EntryScan.phrasing_scores when the caller computed them (to reuse them for retrieval features).
    ``head_input``: what the index's entry classifier reads for this question
    (kb.entry_head.question_head_inputs; default ``vector``): with a classifier, dense questions
    rank by cosine + weight x log P(entry); ``head_log_probabilities``: its output for this question
    when the caller computed it already. ``rerank_input``: gives what the classifier's re-ranking
    classifier (kb.entry_head.EntryHead.rerank) reads, called only when the first leaves the two
    best entries close (it may cost a model call)."""
    fusion = fusion or Fusion()
    hybrid = hybrid and index.keyword is not None
    depth = max(k, fusion.depth) if hybrid else k
    timings = timings_ms if timings_ms is not None else {}
    started = time.perf_counter()
    # The entry classifier ranks dense questions only: hybrid fusion was tuned on cosines.
    bonus = None
    if vector is not None and not hybrid and index.head is not None:
        if head_log_probabilities is None:
            head_log_probabilities = index.head.log_probabilities(vector if head_input is None else head_input)
        bonus = index.head.weight * head_log_probabilities
        if rerank_input is not None and index.head.rerank is not None and scan_scores is None:
            # The scan computes them anyway; kept, a re-ranked question does not scan twice.
            scan_scores = index.scan.phrasing_scores(vector)
    dense = (
        index.dense_candidates(vector, entries=depth, scan_scores=scan_scores, bonus=bonus)
        if vector is not None
        else []
    )
    if bonus is not None and rerank_input is not None and len(dense) > 1:
        first, second = np.searchsorted(index.scan.entry_ids, [dense[0][1], dense[1][1]])
        if index.head.reranks(dense[0][2] + float(bonus[first]), dense[1][2] + float(bonus[second])):
            rerank_started = time.perf_counter()
            bonus = index.head.rerank.weight * index.head.rerank.log_probabilities(rerank_input())
            dense = index.dense_candidates(vector, entries=depth, scan_scores=scan_scores, bonus=bonus)
            timings["rerank"] = (time.perf_counter() - rerank_started) * 1000
    searched = time.perf_counter()
    keyword = index.keyword_candidates(tokens, entries=depth) if hybrid else []
    keyword_done = time.perf_counter()
    timings["search"] = (searched - started) * 1000
    if hybrid:
        timings["keyword"] = timings.get("keyword", 0.0) + (keyword_done - searched) * 1000
    if keep is not None:
        allowed = keep({entry_id for _, entry_id, _ in dense} | {entry_id for _, entry_id, _ in keyword})
        dense = [hit for hit in dense if hit[1] in allowed]
        keyword = [hit for hit in keyword if hit[1] in allowed]
    fuse_started = time.perf_counter()
    if bonus is not None:
        ranked = _classifier_ranked(index, dense, bonus, k)
        timings["fuse"] = (time.perf_counter() - fuse_started) * 1000
        return ranked
    dense_extra, keyword_bound = None, None
    if hybrid and fusion.method == "score":
        ranked_densely = {entry_id for _, entry_id, _ in dense}
        keyword_only = [entry_id for _, entry_id, _ in keyword[: fusion.depth] if entry_id not in ranked_densely]
        dense_extra = index.entries_best_dense(vector, keyword_only) if vector is not None else {}
        keyword_bound = index.keyword.query_bound(tokens)
    ranked = entries_fuse(
        dense, keyword, k=k, hybrid=hybrid, fusion=fusion, keyword_bound=keyword_bound, dense_extra=dense_extra
    )
    missing = [entry.entry_id for entry in ranked if entry.score is None]
    if missing and vector is not None:
        best = index.entries_best_dense(vector, missing)
        ranked = [
            dataclasses.replace(entry, score=best[entry.entry_id][0], variant_id=best[entry.entry_id][1])
            if entry.score is None and entry.entry_id in best
            else entry
            for entry in ranked
        ]
    timings["fuse"] = (time.perf_counter() - fuse_started) * 1000
    return ranked


def _classifier_ranked(index: LoadedIndex, dense: Sequence[PhrasingHit], bonus: np.ndarray, k: int) -> list[FusedEntry]:
    """The top-k of ``dense`` (already in cosine + bonus order, one hit per entry) with what ranked
    them as the fused score."""
    groups = np.searchsorted(index.scan.entry_ids, [entry_id for _, entry_id, _ in dense[:k]])
    return [
        FusedEntry(entry_id, score, variant_id, fused_score=score + float(bonus[group]))
        for (variant_id, entry_id, score), group in zip(dense[:k], groups.tolist(), strict=True)
    ]


def query_hybrid(query: str) -> bool:
    """Whether keyword results join this question's search: KB_HYBRID_SEARCH is on and the
    question's language (kb.language.detect_language) is in KB_HYBRID_LANGUAGES. By default only
    Chinese: there the fusion measurably helped, while on English questions it helped BANKING77 at
    the edge of chance and hurt the demo knowledge base (docs/BENCHMARKS.md)."""
    return settings.KB_HYBRID_SEARCH and detect_language(query) in settings.KB_HYBRID_LANGUAGES


def entry_search(*, query: str, k: int | None = None, features: bool = False) -> SearchResult:
    """Top-k published entries for ``query``: every phrasing is searched, scores aggregate per
    entry by their best phrasing; when :func:`query_hybrid` says so, BM25 keyword results are
    fused in.

    A question the embedder cannot read still gets keyword results in hybrid mode (``readable`` is
    False and their ``score`` 0.0, so they never pass an answer threshold, but hit testing and the
    transcript show what the keywords found).

    With ``features``, the result carries the best hit's retrieval features (for the answer
    confidence), computed from the same scan of the phrasings as the search; only a flat index
    has that scan, so an approximate (HNSW) index gives none."""
    k = k or settings.KB_SEARCH_TOP_K
    hybrid = query_hybrid(query)
    # The index first: the question is embedded by the model version its vectors are of.
    index = current_index.get()
    embedder = embedder_for(index.model_directory) if index is not None else get_embedder()
    readable = embedder.can_read(query)
    if not readable and not hybrid:
        return SearchResult(hits=[], index_version=None, readable=False)
    if index is None:
        return SearchResult(hits=[], index_version=None, readable=readable)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    vector = query_encode(query, embedder) if readable else None
    timings["embed"] = (time.perf_counter() - started) * 1000
    hybrid = hybrid and index.keyword is not None
    tokens: list[str] = []
    if hybrid:
        tokenize_started = time.perf_counter()
        tokens = text_tokenize(query)
        timings["keyword"] = (time.perf_counter() - tokenize_started) * 1000
    entries: dict[int, tuple[str, str, str, dict]] = {}

    def published(entry_ids: set[int]) -> Collection[int]:
        # The database has the last word: an entry unpublished or deleted since the index was
        # built never answers.
        entries.update((entry_id, rest) for entry_id, *rest in published_entry_rows(entry_ids))
        return entries.keys()

    classified = index.head is not None and vector is not None and not hybrid
    log_probabilities = None
    if classified:
        head_started = time.perf_counter()
        head_input = question_head_inputs(embedder, [query], vector[None], index.head.reads)[0]
        log_probabilities = index.head.log_probabilities(head_input)  # ranks, and gives features
        timings["classifier"] = (time.perf_counter() - head_started) * 1000
    scan_scores = None
    if features and index.scan is not None and vector is not None:
        scan_scores = index.scan.phrasing_scores(vector)
    ranked = index_entries_rank(
        index=index,
        vector=vector,
        tokens=tokens,
        k=k,
        hybrid=hybrid,
        fusion=Fusion.from_settings(),
        keep=published,
        timings_ms=timings,
        scan_scores=scan_scores,
        head_log_probabilities=log_probabilities,
        rerank_input=(
            (lambda: question_head_inputs(embedder, [query], vector[None], index.head.rerank.reads)[0])
            if classified and index.head.rerank is not None
            else None
        ),
    )
    hits = [
        EntryHit(
            entry_id=entry.entry_id,
            question=entries[entry.entry_id][0],
            answer=entries[entry.entry_id][1],
            language=entries[entry.entry_id][2],
            translations=entries[entry.entry_id][3],
            score=entry.score if entry.score is not None else 0.0,
            matched_variant_id=entry.variant_id if entry.variant_id is not None else entry.keyword_variant_id,
            keyword_score=entry.keyword_score,
            fused_score=entry.fused_score,
        )
        for entry in ranked
    ]
    values = None
    if scan_scores is not None and hits:
        features_started = time.perf_counter()
        values = retrieval_features(
            index.scan,
            vector,
            query,
            scores=scan_scores,
            entry_id=hits[0].entry_id,
            log_probabilities=log_probabilities,
        )
        timings["features"] = (time.perf_counter() - features_started) * 1000
    return SearchResult(
        hits=hits,
        index_version=index.version,
        readable=readable,
        timings_ms=timings,
        mode="hybrid" if hybrid else ("dense+classifier" if classified else "dense"),
        features=values,
        vector=vector if values is not None else None,
    )


def published_entry_rows(entry_ids: Collection[int]) -> list[tuple[int, str, str, str, dict]]:
    """(id, question, answer, language, translations) of those of ``entry_ids`` that are published.

    Plain SQL: this runs for every customer message, and through the ORM the same query took 0.58 ms
    against 0.25 ms sent directly (measured on PostgreSQL): building the query cost more than running it."""
    if not entry_ids:
        return []
    quote = connection.ops.quote_name
    ids = list(entry_ids)
    sql = (
        f"SELECT {quote('id')}, {quote('question')}, {quote('answer')}, {quote('language')}, "
        f"{quote('translations')} FROM {quote(Entry._meta.db_table)} "
        f"WHERE {quote('is_published')} = %s AND {quote('id')} IN ({', '.join(['%s'] * len(ids))})"
    )
    translations = Entry._meta.get_field("translations")
    with connection.cursor() as cursor:
        cursor.execute(sql, [True, *ids])
        rows = cursor.fetchall()
    return [
        (entry_id, question, answer, language, translations.from_db_value(value, None, connection))
        for entry_id, question, answer, language, value in rows
    ]


def search_ready() -> bool:
    """Whether this process has an index to search (a web process that has not loaded one yet
    must not answer as if the knowledge base were empty)."""
    return current_index.get() is not None


def search_warm_up() -> None:
    """Load the embedder, jieba's dictionary and the current index now, so the first customer does
    not wait."""
    embedder = get_embedder()
    embedder.encode(["warm up"])
    embedder.encode_queries(["warm up"])  # questions may run on another session (KB_QUERY_PRECISION)
    keyword_warm_up()
    try:
        current_index.refresh()
    except Exception:  # noqa: BLE001 - no database yet (before migrate) must not stop start-up
        pass

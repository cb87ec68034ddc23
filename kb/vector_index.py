"""FAISS index files: building, atomic writing, loading, and the per-process current version.

One file per published version holds the serialized index (ids are variant ids), the
variant -> entry mapping and the phrasings' BM25 keyword index (kb.keyword), so a web process
swaps dense and keyword search together with a single reference assignment. Files written before
the keyword index existed still load, for dense search only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from kb.entry_head import EntryHead
from kb.keyword import TOKENIZER_VERSION, KeywordIndex, keyword_index_from_texts, strings_pack, strings_unpack

logger = logging.getLogger(__name__)

PhrasingHit = tuple[int, int, float]  # (variant_id, entry_id, score)


@dataclass(frozen=True)
class EntryScan:
    """An exact search of a flat index by entry: every phrasing's cosine in one pass over the
    stored vectors, then each entry's best. A top-k phrasing search cannot stop at k entries: with
    ~130 close phrasings per entry (BANKING77) the top 40 phrasings held two or three entries, and
    the search was repeated deeper, 3.3 ms a question at 10,000 phrasings against ~0.5 here."""

    vectors: faiss.IndexFlat  # holds the vectors scanned (not copied)
    row_order: np.ndarray  # row numbers sorted by entry
    entry_starts: np.ndarray  # where each entry's rows start in row_order
    entry_ids: np.ndarray  # the entry of each group
    variant_of_row: np.ndarray  # variant id by row number
    # Per entry (same order as entry_ids), for kb.retrieval_features: the unit mean of its
    # phrasings, and how alike its phrasings typically are (mean cosine of each to its nearest
    # sibling; 1.0 for an entry with one phrasing).
    centroids: np.ndarray
    typical_similarity: np.ndarray

    @classmethod
    def of(cls, index: faiss.Index, entry_by_variant: dict[int, int]) -> EntryScan | None:
        """The scan of ``index`` if it is exact (an id map over a flat inner-product index)."""
        if not isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap) or index.ntotal == 0:
            return None
        inner = faiss.downcast_index(index.index)
        if not isinstance(inner, faiss.IndexFlatIP):
            return None
        variant_of_row = faiss.vector_to_array(index.id_map).astype(np.int64)
        entry_of_row = np.fromiter(
            (entry_by_variant[v] for v in variant_of_row.tolist()), np.int64, len(variant_of_row)
        )
        row_order = np.argsort(entry_of_row, kind="stable")
        entry_ids, entry_starts = np.unique(entry_of_row[row_order], return_index=True)
        matrix = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(inner.ntotal, inner.d)
        centroids, typical = _entry_shapes(matrix, row_order, entry_starts)
        return cls(inner, row_order, entry_starts, entry_ids, variant_of_row, centroids, typical)

    def phrasing_scores(self, query: np.ndarray) -> np.ndarray:
        """The query's cosine with every phrasing, grouped by entry (in row_order)."""
        query = np.ascontiguousarray(query.reshape(-1), dtype=np.float32)
        scores = np.empty(self.vectors.ntotal, dtype=np.float32)
        # FAISS's own single-threaded SIMD loop: numpy's matmul would start BLAS threads that spin
        # against the other processes on the cores.
        faiss.fvec_inner_products_ny(
            faiss.swig_ptr(scores), faiss.swig_ptr(query), self.vectors.get_xb(), self.vectors.d, self.vectors.ntotal
        )
        return scores[self.row_order]

    def entries_best(
        self,
        query: np.ndarray,
        *,
        entries: int,
        scores: np.ndarray | None = None,
        bonus: np.ndarray | None = None,
    ) -> list[PhrasingHit]:
        """The best phrasing of the ``entries`` best entries (all if fewer), best first.
        ``scores``: the query's :meth:`phrasing_scores` when the caller has them already.
        ``bonus``: added to each entry's cosine for ranking only (the entry classifier's weighted
        log P, in entry_ids order); the hits still carry the cosine."""
        by_entry = self.phrasing_scores(query) if scores is None else scores
        best = np.maximum.reduceat(by_entry, self.entry_starts)
        rank = best if bonus is None else best + bonus
        count = min(entries, len(best))
        top = np.argpartition(-rank, count - 1)[:count] if count < len(best) else np.arange(len(best))
        top = top[np.argsort(-rank[top], kind="stable")]
        ends = np.append(self.entry_starts[1:], len(by_entry))
        hits = []
        for group in top.tolist():
            start = self.entry_starts[group]
            row = self.row_order[start + int(np.argmax(by_entry[start : ends[group]]))]
            hits.append((int(self.variant_of_row[row]), int(self.entry_ids[group]), float(best[group])))
        return hits


# Phrasings per entry compared pairwise for its typical similarity (a sample beyond that).
TYPICAL_SAMPLE = 256


def _entry_shapes(matrix: np.ndarray, row_order: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each entry's unit centroid and typical phrasing-to-nearest-sibling cosine."""
    ends = np.append(starts[1:], len(row_order))
    centroids = np.zeros((len(starts), matrix.shape[1]), dtype=np.float32)
    typical = np.ones(len(starts), dtype=np.float32)
    for group, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        rows = row_order[start:end]
        own = matrix[rows]
        centroid = own.mean(axis=0)
        centroids[group] = centroid / max(float(np.linalg.norm(centroid)), 1e-12)
        if len(rows) > 1:
            if len(rows) > TYPICAL_SAMPLE:  # bounded cost for an entry with thousands of phrasings
                own = own[np.linspace(0, len(rows) - 1, TYPICAL_SAMPLE).astype(int)]
            similar = own @ own.T
            np.fill_diagonal(similar, -np.inf)
            typical[group] = float(similar.max(axis=1).mean())
    return centroids, typical


@dataclass(frozen=True)
class LoadedIndex:
    """An index version held in memory by a web process."""

    version: int
    index: faiss.Index
    entry_by_variant: dict[int, int]
    keyword: KeywordIndex | None = None
    variants_by_entry: dict[int, np.ndarray] = field(default_factory=dict)
    scan: EntryScan | None = None
    # The model version its vectors are of (kb.models.EmbeddingModel.directory; "" = the base model):
    # questions searched in it must be embedded by that version.
    model_directory: str = ""
    # The entry classifier fitted on these phrasings (kb.entry_head), when it earned its place.
    head: EntryHead | None = None

    @classmethod
    def create(
        cls,
        *,
        version: int,
        index: faiss.Index,
        variant_ids: np.ndarray,
        entry_ids: np.ndarray,
        keyword: KeywordIndex | None = None,
        head: EntryHead | None = None,
    ) -> LoadedIndex:
        """Wrap a dense index (and optionally its keyword index and entry classifier) with the id
        maps searches need. A classifier is kept only over an exact index of the same entries (it
        ranks through EntryScan)."""
        variant_ids = np.asarray(variant_ids, dtype=np.int64)
        entry_ids = np.asarray(entry_ids, dtype=np.int64)
        order = np.argsort(entry_ids, kind="stable")
        entries, starts = np.unique(entry_ids[order], return_index=True)
        groups = np.split(variant_ids[order], starts[1:]) if len(entries) else []
        entry_by_variant = dict(zip(variant_ids.tolist(), entry_ids.tolist(), strict=True))
        scan = EntryScan.of(index, entry_by_variant)
        if head is not None and (scan is None or not np.array_equal(head.entry_ids, scan.entry_ids)):
            logger.warning("index v%s: its entry classifier does not match its entries; ranking by cosine", version)
            head = None
        return cls(
            version=version,
            index=index,
            entry_by_variant=entry_by_variant,
            keyword=keyword,
            variants_by_entry=dict(zip(entries.tolist(), groups, strict=True)),
            scan=scan,
            head=head,
        )

    def search(self, query: np.ndarray, k: int) -> list[PhrasingHit]:
        """Top variants for one unit-length query vector as (variant_id, entry_id, score)."""
        if self.index.ntotal == 0:
            return []
        # One OpenMP thread for one query (this sets only the calling thread's count, in FAISS's own
        # OpenMP runtime, not torch's): on 2 cores a 10k x 896 flat search took 1.5 ms on one
        # thread against 2.2-2.8 ms on two, and 9 ms against 55 ms while other processes kept the
        # cores busy.
        faiss.omp_set_num_threads(1)
        scores, ids = self.index.search(query.reshape(1, -1).astype(np.float32), min(k, self.index.ntotal))
        return [
            (int(variant_id), self.entry_by_variant[int(variant_id)], float(score))
            for score, variant_id in zip(scores[0], ids[0], strict=False)
            if variant_id != -1
        ]

    def dense_candidates(
        self,
        query: np.ndarray,
        *,
        entries: int,
        scan_scores: np.ndarray | None = None,
        bonus: np.ndarray | None = None,
    ) -> list[PhrasingHit]:
        """The best phrasing by cosine of at least ``entries`` entries (all if fewer), best first.
        ``scan_scores``: the query's EntryScan.phrasing_scores, if computed already (flat index);
        ``bonus``: per entry in scan order (the entry classifier's weight x log P), to rank by
        cosine + bonus (flat index only)."""
        if self.scan is not None:
            # A few more than asked: callers drop entries unpublished since the index was built.
            return self.scan.entries_best(query, entries=max(entries * 2, entries + 8), scores=scan_scores, bonus=bonus)
        return _entries_covering(lambda limit: self.search(query, limit), entries=entries, total=self.index.ntotal)

    def keyword_candidates(self, tokens: Sequence[str], *, entries: int) -> list[PhrasingHit]:
        """The best phrasing by BM25 of up to ``entries`` or more entries sharing a token with the
        query, best first; [] for an index file without keyword data."""
        if self.keyword is None:
            return []
        return _entries_covering(
            lambda limit: self.keyword.search(tokens, limit), entries=entries, total=self.keyword.size
        )

    def entries_best_dense(self, query: np.ndarray, entry_ids: Iterable[int]) -> dict[int, tuple[float, int]]:
        """Each entry's best phrasing for the query, as (cosine, variant_id), from the stored vectors:
        for entries that keyword search found but dense search did not rank."""
        best: dict[int, tuple[float, int]] = {}
        query = query.reshape(-1).astype(np.float32)
        for entry_id in entry_ids:
            variant_ids = self.variants_by_entry.get(entry_id)
            if variant_ids is None or not len(variant_ids):
                continue
            scores = self.index.reconstruct_batch(variant_ids) @ query
            top = int(np.argmax(scores))
            best[entry_id] = (float(scores[top]), int(variant_ids[top]))
        return best


def _entries_covering(search: Callable[[int], list[PhrasingHit]], *, entries: int, total: int) -> list[PhrasingHit]:
    """Each entry's best phrasing, best entry first, from top phrasings fetched until they span
    ``entries`` distinct entries (or every phrasing): one entry with many similar phrasings can fill
    a whole batch. A flat search costs about the same for any limit (the scan over all vectors
    dominates), so a retry asks for sixteen times as many rather than scanning again and again."""
    limit = max(entries * 8, 1)
    while True:
        hits = search(limit)
        best: dict[int, PhrasingHit] = {}
        for hit in hits:  # best first, so an entry's first hit is its best phrasing
            best.setdefault(hit[1], hit)
        if len(best) >= entries or len(hits) < limit or limit >= total:
            return list(best.values())
        limit = min(total, limit * 16)


def choose_index_kind(*, configured: str, vector_count: int, hnsw_threshold: int) -> str:
    """'flat' (exact) or 'hnsw' (approximate): as configured, or by size when 'auto'."""
    if configured not in {"auto", "flat", "hnsw"}:
        raise ValueError(f"KB_INDEX_TYPE must be auto, flat or hnsw, not {configured!r}")
    if configured != "auto":
        return configured
    return "hnsw" if vector_count >= hnsw_threshold else "flat"


def build_index(
    vectors: np.ndarray, variant_ids: np.ndarray, dimension: int, *, kind: str = "flat", hnsw_m: int = 32
) -> faiss.Index:
    """Inner-product index over unit vectors (cosine), addressed by variant id.

    Flat search is exact and fast enough for tens of thousands of phrasings; HNSW keeps search
    sub-millisecond for millions at a small recall cost."""
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dimension, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = 80
        inner.hnsw.efSearch = 64
    else:
        inner = faiss.IndexFlatIP(dimension)
    index = faiss.IndexIDMap2(inner)
    if len(variant_ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), variant_ids.astype(np.int64))
    return index


def write_index_file(
    path: Path,
    index: faiss.Index,
    variant_ids: np.ndarray,
    entry_ids: np.ndarray,
    *,
    keyword: KeywordIndex | None = None,
    texts: Sequence[str] | None = None,
    head: EntryHead | None = None,
) -> None:
    """Write atomically: readers see the old file or the complete new one, never a partial one.

    The keyword index is stored as its score arrays (loading them takes ~3 ms at 10k phrasings,
    where tokenizing and building again takes ~0.5 s); the texts are kept so that a process whose
    tokenizer has changed can rebuild the keyword index instead of matching mismatched tokens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, np.ndarray] = {}
    if keyword is not None:
        extra.update(keyword.arrays())
    if texts is not None:
        extra["texts"], extra["text_offsets"] = strings_pack(texts)
    if head is not None:
        extra.update(head.arrays())
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, index=faiss.serialize_index(index), variant_ids=variant_ids, entry_ids=entry_ids, **extra)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_index_file(path: Path, version: int) -> LoadedIndex:
    """Load a file written by :func:`write_index_file` (by any version of it)."""
    with np.load(path) as data:
        index = faiss.deserialize_index(data["index"])
        variant_ids, entry_ids = data["variant_ids"], data["entry_ids"]
        keyword = _keyword_index_read(data, variant_ids=variant_ids, entry_ids=entry_ids, path=path)
        head = EntryHead.from_arrays(data)
    return LoadedIndex.create(
        version=version, index=index, variant_ids=variant_ids, entry_ids=entry_ids, keyword=keyword, head=head
    )


def _keyword_index_read(data, *, variant_ids: np.ndarray, entry_ids: np.ndarray, path: Path) -> KeywordIndex | None:
    """The file's keyword index; rebuilt from its texts if it was tokenized differently; None in
    files written before keyword search existed (those serve dense search only)."""
    if "bm25_data" not in data.files:
        return None
    keyword = KeywordIndex.from_arrays(data)
    if keyword.tokenizer_version == TOKENIZER_VERSION:
        return keyword
    if "texts" not in data.files:
        logger.warning("%s: keyword index from tokenizer v%s and no texts: dense only", path, keyword.tokenizer_version)
        return None
    logger.info(
        "%s: re-tokenizing phrasings (tokenizer v%s -> v%s)", path, keyword.tokenizer_version, TOKENIZER_VERSION
    )
    texts = strings_unpack(data["texts"], data["text_offsets"])
    return keyword_index_from_texts(texts=texts, variant_ids=variant_ids, entry_ids=entry_ids)


class CurrentIndex:
    """The index version this process serves.

    Without a background loader, :meth:`get` re-checks the published version at most every
    ``poll_seconds`` itself (commands, tests). A web process calls :meth:`start_background` once:
    from then on a thread of its own checks and loads new versions, and :meth:`get` only reads a
    reference, so no customer's request ever waits on the database or a file load for it. The swap
    is one reference assignment: a search holds the version it started with."""

    # A poll interval of 0 (tests) must not spin a core.
    MIN_BACKGROUND_POLL_SECONDS = 0.05

    def __init__(self, *, latest_version, poll_seconds, model_prepare: Callable[[str], None] | None = None):
        self._latest_version = latest_version  # () -> (version, path[, model directory]) | None
        self._poll_seconds = poll_seconds  # () -> float
        # Loads (and warms) a version's embedding model before its index goes live, so the swap
        # never leaves a question embedded by a model that is not loaded yet.
        self._model_prepare = model_prepare
        self._loaded: LoadedIndex | None = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()
        self._background: threading.Thread | None = None
        self._failed_version: int | None = None
        self._after_load: Callable[[], None] | None = None

    @property
    def background(self) -> bool:
        """Whether a background thread keeps the index current."""
        return self._background is not None

    def get(self) -> LoadedIndex | None:
        """The newest published index (loading it first if this process has no background loader
        and its last check is older than the poll interval)."""
        if self._background is None and time.monotonic() - self._checked_at >= self._poll_seconds():
            self.refresh()
        return self._loaded

    def refresh(self) -> None:
        """Look up the published version now and load it if it is newer than ours."""
        with self._lock:
            latest = self._latest_version()
            self._checked_at = time.monotonic()
            if latest is None:
                self._loaded = None
                return
            version, path, *rest = latest
            directory = rest[0] if rest else ""
            if self._loaded is None or self._loaded.version != version:
                try:
                    started = time.perf_counter()
                    loaded = read_index_file(path, version)
                    if directory:
                        loaded = dataclasses.replace(loaded, model_directory=directory)
                    # Only a change of model version needs one (not every new index of the same model).
                    new_model = self._loaded is None or self._loaded.model_directory != directory
                    if self._model_prepare is not None and new_model:
                        self._model_prepare(directory)
                except (OSError, ValueError, KeyError, RuntimeError):
                    # Keep answering from the version we have; the next poll tries again. The
                    # background loader polls every second: one traceback per version, not per poll.
                    if self._failed_version != version:
                        logger.exception("could not load index v%s from %s", version, path)
                    self._failed_version = version
                    return
                self._loaded = loaded
                logger.info("index v%s loaded in %.0f ms", version, (time.perf_counter() - started) * 1000)
                if self._after_load is not None:
                    self._after_load()

    def start_background(
        self,
        *,
        after_poll: Callable[[], None] | None = None,
        after_load: Callable[[], None] | None = None,
    ) -> None:
        """Check for new versions in a daemon thread from now on (``after_poll`` runs after each
        check, e.g. to drop a broken database connection; ``after_load`` after a version was loaded)."""
        if self._background is not None:
            return
        self._after_load = after_load
        self._background = threading.Thread(
            target=self._poll_forever, args=(after_poll,), name="index-loader", daemon=True
        )
        self._background.start()

    def _poll_forever(self, after_poll: Callable[[], None] | None) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a database outage must not end the loader; it retries
                logger.exception("checking for a new index version failed")
            finally:
                if after_poll is not None:
                    after_poll()
            time.sleep(max(self._poll_seconds(), self.MIN_BACKGROUND_POLL_SECONDS))

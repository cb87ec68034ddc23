"""The entry classifier: a multinomial logistic regression over the knowledge base's phrasings that
says which entry a question belongs to, learned each time an index is published (issue 12).

Dense search ranks an entry by its best phrasing's cosine. Every phrasing is also a labelled
example, and a classifier trained on all of an entry's phrasings sees what they share where the
nearest phrasing sees one sentence. Live ranking adds the two: ``cosine + weight x log P(entry)``;
the reported score (what the answer thresholds compare) stays the cosine. Measured on BANKING77's
test questions (docs/BENCHMARKS.md): best cosine 91.95%, the classifier alone 93.1%, both 93.7%.

The classifier must earn its place on every knowledge base: :func:`entry_head_fit` holds out a
share of each entry's phrasings, fits on the rest, picks the weight on the held-out ones and keeps
the classifier only when held-out top-1 beats the cosine's beyond noise (McNemar's exact test);
otherwise the index ranks by cosine alone, as before, and the report says why. Fitting takes
scikit-learn (the worker); applying it is one small matrix product (numpy, any process).

A classifier reading more than the question's own vector (MiniLM and USE side by side) ranks a
little better but needs a USE call per question. "gated" (the default input) keeps that cost for
the few questions where it can matter: the first classifier ranks; where it leaves the two best
entries within a margin, the second re-ranks. The margin and the second's weight are chosen on the
same held-out phrasings, and the second is kept only if it ranks them better.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass

import faiss
import numpy as np

from kb.held_out import HOLD_OUT_SHARE, MIN_ENTRIES, MIN_HELD_OUT, MIN_PHRASINGS, entry_best_scores, mcnemar_p

# The weights tried on held-out phrasings. log P spans ~0 (sure) to ~-10 (ruled out), cosines ~0.3
# to 1: on BANKING77 0.02-0.05 were best, 0.1 already worse.
WEIGHTS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
REGULARISATION_C = 10.0  # scikit-learn's inverse strength; 3 and 30 measured no better on BANKING77
MAX_ITERATIONS = 300
MAX_ROWS = 60_000  # above this the rows are sampled: fitting time grows with them, accuracy barely
SIGNIFICANCE = 0.05
# A measured "no" is reused for the same entries while their phrasings grow by less than this share:
# more phrasings may give the classifier what it lacked.
REUSE_SIZE_CHANGE = 0.1


@dataclass(frozen=True)
class EntryHead:
    """A fitted classifier: ``log P(entry | query) = log_softmax(coef @ query + intercept)`` over
    ``entry_ids`` (sorted), and the weight of that in the ranking."""

    entry_ids: np.ndarray  # int64, sorted: the same order as kb.vector_index.EntryScan.entry_ids
    coef: np.ndarray  # float32 (entries, dimension)
    intercept: np.ndarray  # float32 (entries,)
    weight: float
    reads: str = "both"  # what it reads for a question: "both" or "question" (see INPUTS)
    # KB_ENTRY_CLASSIFIER_INPUT "gated": a second classifier, reading both models, that re-ranks a
    # question only when this one leaves its top two entries within ``rerank_margin`` of each other
    # (cosine + weight x log P), so most questions never need the USE call it costs.
    rerank: EntryHead | None = None
    rerank_margin: float = 0.0

    def log_probabilities(self, query: np.ndarray) -> np.ndarray:
        """log P(entry) for each of ``entry_ids`` given one query vector."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        logits = np.empty(len(self.coef), dtype=np.float32)
        # FAISS's single-threaded loop, as EntryScan's: a numpy product may start BLAS threads that
        # spin against the other processes on the cores.
        faiss.fvec_inner_products_ny(
            faiss.swig_ptr(logits), faiss.swig_ptr(query), faiss.swig_ptr(self.coef), len(query), len(self.coef)
        )
        logits += self.intercept
        logits -= logits.max()
        return logits - np.log(np.exp(logits).sum())

    def reranks(self, first: float, second: float) -> bool:
        """Whether the re-ranking classifier should rank a question whose two best entries score
        ``first`` and ``second`` by this one (cosine + weight x log P)."""
        return self.rerank is not None and first - second < self.rerank_margin

    def arrays(self) -> dict[str, np.ndarray]:
        """What the index file stores (kb.vector_index.write_index_file)."""
        out = {
            "head_entry_ids": self.entry_ids,
            "head_coef": self.coef,
            "head_intercept": self.intercept,
            "head_weight": np.array([self.weight], dtype=np.float64),
            "head_reads": np.array([self.reads]),
        }
        if self.rerank is not None:
            out.update(
                rerank_coef=self.rerank.coef,
                rerank_intercept=self.rerank.intercept,
                rerank_weight=np.array([self.rerank.weight], dtype=np.float64),
                rerank_reads=np.array([self.rerank.reads]),
                rerank_margin=np.array([self.rerank_margin], dtype=np.float64),
            )
        return out

    @classmethod
    def from_arrays(cls, data: Mapping[str, np.ndarray]) -> EntryHead | None:
        """The head stored in an index file; None in files without one."""
        names = getattr(data, "files", data)
        if "head_coef" not in names:
            return None
        entry_ids = np.asarray(data["head_entry_ids"], dtype=np.int64)
        rerank = None
        if "rerank_coef" in names:
            rerank = cls(
                entry_ids=entry_ids,
                coef=np.ascontiguousarray(data["rerank_coef"], dtype=np.float32),
                intercept=np.asarray(data["rerank_intercept"], dtype=np.float32),
                weight=float(data["rerank_weight"][0]),
                reads=str(data["rerank_reads"][0]),
            )
        return cls(
            entry_ids=entry_ids,
            coef=np.ascontiguousarray(data["head_coef"], dtype=np.float32),
            intercept=np.asarray(data["head_intercept"], dtype=np.float32),
            weight=float(data["head_weight"][0]),
            reads=str(data["head_reads"][0]) if "head_reads" in names else "both",
            rerank=rerank,
            rerank_margin=float(data["rerank_margin"][0]) if rerank is not None else 0.0,
        )


@dataclass(frozen=True)
class HeadFit:
    """What :func:`entry_head_fit` did: the head (None when declined or not earned) and a report for
    the index version (held-out top-1 with and without, the weight, the paired test, sizes, time)."""

    head: EntryHead | None
    report: dict


def entries_key(entry_ids: np.ndarray) -> str:
    """A short fingerprint of a set of entries: a head fitted on the same entries can reuse the
    weight chosen last time instead of choosing it again."""
    unique = np.unique(np.asarray(entry_ids, dtype=np.int64))
    return hashlib.sha1(unique.tobytes()).hexdigest()[:16]


# What the classifier reads for a question (KB_ENTRY_CLASSIFIER_INPUT): "both" = an English
# question's MiniLM and USE vectors side by side (one USE call more per question, ~2.5 ms of CPU
# here); "question" = its query vector alone; "gated" = the question, and where that leaves the top
# two entries close, a second classifier reading both re-ranks (the USE call for those alone). On
# BANKING77 (tuned model): question 93.80% top-1, gated 94.25% with 3% of questions re-ranked, both
# 94.25% (docs/BENCHMARKS.md).
INPUTS = ("both", "question", "gated")
# The margins (between the two best entries' cosine + weight x log P) tried for "gated".
RERANK_MARGINS = (0.02, 0.05, 0.1, 0.2)


def primary_reads(reads: str) -> str:
    """What the first (or only) classifier of setting ``reads`` reads: "gated" starts from the question."""
    return "question" if reads == "gated" else reads


def rerank_head_rows(embedder, vectors: np.ndarray, texts: list[str], reads: str) -> np.ndarray | None:
    """For "gated", the rows the re-ranking classifier learns from (the phrasings as it reads them:
    both models), in the order of :func:`phrasing_head_rows`' rows; None otherwise, or for a
    single-model embedder (both of its inputs are the same vector)."""
    rows_of = getattr(embedder, "phrasing_head_rows", None)
    if reads != "gated" or rows_of is None:
        return None
    return rows_of(vectors, texts, reads="both")[0]


def phrasing_head_rows(
    embedder, vectors: np.ndarray, texts: list[str], reads: str = "both"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows the classifier learns from, the same rows as questions embedded for the cosine, and
    each row's phrasing: ``embedder.phrasing_head_rows`` (the stored phrasing vectors in the forms
    questions arrive in); for an embedder without one (a single model, which embeds a question as it
    embeds a phrasing and gives the classifier that vector), the vectors themselves."""
    rows_of = getattr(embedder, "phrasing_head_rows", None)
    if rows_of is None:
        return vectors, vectors, np.arange(len(vectors))
    return rows_of(vectors, texts, reads=primary_reads(reads))


def question_head_inputs(embedder, texts: list[str], queries: np.ndarray, reads: str = "both") -> np.ndarray:
    """What the classifier reads for questions ``texts`` embedded as ``queries`` (by
    ``embedder.encode_queries``): the embedder's ``head_inputs``, or the queries themselves."""
    inputs_of = getattr(embedder, "head_inputs", None)
    return queries if inputs_of is None else inputs_of(texts, queries, reads=primary_reads(reads))


def _split(entry_ids: np.ndarray, seed: int) -> np.ndarray | None:
    """Which phrasings are held out (HOLD_OUT_SHARE of each entry with MIN_PHRASINGS or more), or
    None when too few can be."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(entry_ids), dtype=bool)
    trainable = 0
    for entry in np.unique(entry_ids):
        rows = np.flatnonzero(entry_ids == entry)
        if len(rows) < MIN_PHRASINGS:
            continue
        trainable += 1
        held[rng.permutation(rows)[: max(1, round(len(rows) * HOLD_OUT_SHARE))]] = True
    if trainable < MIN_ENTRIES or held.sum() < MIN_HELD_OUT:
        return None
    return held


def _fit(rows: np.ndarray, labels: np.ndarray, warm: EntryHead | None = None):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=REGULARISATION_C, max_iter=MAX_ITERATIONS, warm_start=warm is not None)
    if warm is not None:
        model.coef_, model.intercept_ = warm.coef.astype(np.float64), warm.intercept.astype(np.float64)
    model.fit(rows, labels)
    return model


def _head(model, weight: float, reads: str, rerank: EntryHead | None = None, margin: float = 0.0) -> EntryHead:
    return EntryHead(
        entry_ids=np.asarray(model.classes_, dtype=np.int64),
        coef=np.ascontiguousarray(model.coef_, dtype=np.float32),
        intercept=np.asarray(model.intercept_, dtype=np.float32),
        weight=float(weight),
        reads=primary_reads(reads),
        rerank=rerank,
        rerank_margin=float(margin) if rerank is not None else 0.0,
    )


def _rerank_choose(
    cosine: np.ndarray, bonus: np.ndarray, rerank_log_p: np.ndarray, truth: np.ndarray
) -> tuple[float, float, float, float]:
    """The (weight, margin) of the re-ranking classifier that ranks the held-out questions best
    (ties: the smaller margin, which re-ranks fewer questions, then the smaller weight), with its
    top-1 and the share of questions it re-ranks."""
    first = cosine + bonus
    top_two = np.sort(first, axis=1)[:, -2:]
    close = top_two[:, 1] - top_two[:, 0]
    picked = first.argmax(axis=1)
    candidates = []
    for weight in WEIGHTS:
        reranked = (cosine + weight * rerank_log_p).argmax(axis=1)
        for margin in RERANK_MARGINS:
            right = np.where(close < margin, reranked, picked) == truth
            candidates.append((float(right.mean()), -margin, -weight))
    accuracy, margin, weight = max(candidates)
    return -weight, -margin, accuracy, float((close < -margin).mean())


# What a reused head's report carries over from the measurement that chose it.
_REUSED_REPORT = (
    "held_out",
    "top1_cosine",
    "top1_with_head",
    "top1_head_alone",
    "p_value",
    "top1_reranked",
    "rerank_weight",
    "rerank_margin",
    "rerank_share",
    "rerank_reason",
)


def _sample(count: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(count, MAX_ROWS, replace=False)) if count > MAX_ROWS else np.arange(count)


def entry_head_fit(
    vectors: np.ndarray,
    entry_ids: np.ndarray,
    head_rows: np.ndarray,
    query_rows: np.ndarray,
    row_phrasing: np.ndarray,
    *,
    previous: EntryHead | None = None,
    previous_report: Mapping | None = None,
    seed: int = 0,
    reads: str = "both",
    rerank_rows: np.ndarray | None = None,
) -> HeadFit:
    """Fit the entry classifier for an index.

    ``vectors`` / ``entry_ids``: the index's phrasing vectors and their entries (what the cosine
    ranks). ``head_rows``: the phrasings in the forms questions reach the classifier, and
    ``query_rows`` the same rows as the cosine gets them (:func:`phrasing_head_rows`; a phrasing
    may give several rows, e.g. one per model that may embed a question); ``row_phrasing`` the
    phrasing of each row; ``reads``: what the rows are (INPUTS), recorded in the head.

    ``previous`` / ``previous_report``: the last index's head and report. When they were fitted on
    the same entries, the weight (or the decision to go without a head) is kept and the classifier
    is refitted from the previous coefficients, which is several times faster than choosing again.

    ``rerank_rows`` (``reads`` "gated", :func:`rerank_head_rows`): the same rows as the second
    classifier reads them; it is fitted on the same held-out split and kept, with the weight and
    margin that rank the held-out phrasings best, only if re-ranking the close questions beats the
    first classifier alone there."""
    started = time.perf_counter()
    entry_ids = np.asarray(entry_ids, dtype=np.int64)
    key = entries_key(entry_ids)
    report: dict = {"entries_key": key, "phrasings": int(len(entry_ids)), "rows": int(len(head_rows))}
    rng = np.random.default_rng(seed)
    labels = entry_ids[row_phrasing]
    report["reads"] = reads
    same_entries = (
        previous_report is not None
        and previous_report.get("entries_key") == key
        and previous_report.get("reads", "both") == reads
    )
    if (
        same_entries
        and previous_report.get("kept") is False
        and "held_out" in previous_report  # measured, not declined for size or a failure
        and abs(previous_report.get("phrasings", 0) - len(entry_ids)) <= REUSE_SIZE_CHANGE * len(entry_ids)
    ):
        # Measured on these entries already: do not spend the fit on every edit of a phrasing.
        return HeadFit(None, {**report, "kept": False, "reason": previous_report["reason"], "reused": True})
    if same_entries and previous is not None and np.array_equal(previous.entry_ids, np.unique(entry_ids)):
        sample = _sample(len(head_rows), rng)
        model = _fit(head_rows[sample], labels[sample], warm=previous)
        rerank = None
        if previous.rerank is not None and rerank_rows is not None:
            rerank_model = _fit(rerank_rows[sample], labels[sample], warm=previous.rerank)
            rerank = _head(rerank_model, previous.rerank.weight, "both")
        report.update({key_: previous_report[key_] for key_ in _REUSED_REPORT if key_ in previous_report})
        report.update(
            kept=True,
            weight=previous.weight,
            reranks=rerank is not None,
            reused=True,
            seconds=round(time.perf_counter() - started, 2),
        )
        return HeadFit(_head(model, previous.weight, reads, rerank, previous.rerank_margin), report)

    held = _split(entry_ids, seed)
    if held is None:
        reason = (
            f"too few phrasings to measure a classifier: needs {MIN_ENTRIES}+ entries with {MIN_PHRASINGS}+ "
            f"phrasings each and {MIN_HELD_OUT}+ to hold out"
        )
        return HeadFit(None, {**report, "kept": False, "reason": reason})
    train_rows = ~held[row_phrasing]
    sample_train = np.flatnonzero(train_rows)[_sample(int(train_rows.sum()), rng)]
    model = _fit(head_rows[sample_train], labels[sample_train])
    classes = model.classes_
    asked = np.flatnonzero(held[row_phrasing])
    truth = np.searchsorted(classes, labels[asked])
    cosine, entries = entry_best_scores(vectors[~held], entry_ids[~held], query_rows[asked])
    if not np.array_equal(entries, classes):  # only if sampling MAX_ROWS left an entry without rows
        raise ValueError("the classifier's entries differ from the index's")
    log_p = model.predict_log_proba(head_rows[asked])
    base_right = cosine.argmax(axis=1) == truth
    accuracy = {w: float(((cosine + w * log_p).argmax(axis=1) == truth).mean()) for w in WEIGHTS}
    weight = max(WEIGHTS, key=lambda w: (accuracy[w], -w))
    head_right = (cosine + weight * log_p).argmax(axis=1) == truth
    p_value = mcnemar_p(base_right, head_right)
    report.update(
        held_out=int(len(asked)),
        top1_cosine=round(float(base_right.mean()), 4),
        top1_with_head=round(accuracy[weight], 4),
        top1_head_alone=round(float((log_p.argmax(axis=1) == truth).mean()), 4),
        weight=weight,
        p_value=round(p_value, 4),
    )
    if accuracy[weight] <= base_right.mean() or p_value >= SIGNIFICANCE:
        report.update(
            kept=False,
            reason=(
                f"held-out top-1 {base_right.mean():.2%} by cosine, {accuracy[weight]:.2%} with the classifier "
                f"(p = {p_value:.2f}): not better beyond noise"
            ),
            seconds=round(time.perf_counter() - started, 2),
        )
        return HeadFit(None, report)
    rerank_model, rerank = None, None
    if rerank_rows is not None:
        rerank_model = _fit(rerank_rows[sample_train], labels[sample_train])
        rerank = _rerank_choose(cosine, weight * log_p, rerank_model.predict_log_proba(rerank_rows[asked]), truth)
        report.update(
            top1_reranked=round(rerank[2], 4),
            rerank_weight=rerank[0],
            rerank_margin=rerank[1],
            rerank_share=round(rerank[3], 4),
        )
        if rerank[2] <= accuracy[weight]:
            rerank_model, rerank = None, None
            report["rerank_reason"] = "re-ranking by both models ranked the held-out phrasings no better"
    # Every phrasing now, starting from the held-out fit (same entries: each keeps training phrasings).
    sample = _sample(len(head_rows), rng)
    final_rerank = None
    if rerank_model is not None:
        warm = _head(rerank_model, rerank[0], "both")
        final_rerank = _head(_fit(rerank_rows[sample], labels[sample], warm=warm), rerank[0], "both")
    final = _fit(head_rows[sample], labels[sample], warm=_head(model, weight, reads))
    report.update(kept=True, reranks=final_rerank is not None, seconds=round(time.perf_counter() - started, 2))
    return HeadFit(_head(final, weight, reads, final_rerank, rerank[1] if rerank else 0.0), report)

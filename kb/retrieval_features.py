"""What a question's retrieval looked like, as numbers a calibrated classifier can read: the signal
for answering or falling back that is better than the top cosine alone (issue 12).

All come from the one scan of every phrasing that dense search of a flat index already does
(kb.vector_index.EntryScan) and the entry constants computed when the index is loaded; they cost
~0.3 ms a question on top of it. On BANKING77-OOS a logistic regression over them separated "the
best entry is right" from "out of scope or wrong" with ROC AUC 0.946 against the top cosine's 0.856
(bench/bench_oos_signal.py). What carries it is the best entry's own tightness: how the top score
compares with how alike that entry's phrasings usually are, and the cosine to its centroid.
"""

from __future__ import annotations

import re

import numpy as np

from kb.vector_index import EntryScan

TOP_ENTRIES = 5
NEIGHBOURS = 20

FEATURES = (
    "top1",  # the best entry's cosine (its best phrasing)
    "margin",  # top1 - the second entry's cosine
    "gap5",  # top1 - the fifth entry's cosine
    "std5",  # standard deviation of the top-5 entries' cosines
    "best_top3",  # mean of the best entry's three best phrasings
    "knn10",  # share of the 10 nearest phrasings that belong to the best entry
    "knn20",  # ... of the 20 nearest
    "top10_mean",  # mean cosine of the 10 nearest phrasings (any entry)
    "centroid",  # cosine to the best entry's centroid
    "centroid_margin",  # that minus the best other entry's centroid cosine
    "self_gap",  # top1 - the best entry's typical phrasing-to-nearest-sibling cosine
    "tokens",  # words (runs of letters or CJK) in the question
)
# Only where the index has an entry classifier (kb.entry_head), which says how sure it is:
HEAD_FEATURES = (
    "head_logp",  # log P(the best entry) by the classifier
    "head_margin",  # that minus the best other entry's log P
    "head_entropy",  # the entropy of P over the entries, over its maximum (log of their number)
)

_WORD = re.compile(r"\w+")


def retrieval_features(
    scan: EntryScan,
    query: np.ndarray,
    text: str,
    *,
    scores: np.ndarray | None = None,
    entry_id: int | None = None,
    log_probabilities: np.ndarray | None = None,
) -> dict[str, float]:
    """The features of one question (its unit query vector and its text) against ``scan``'s
    phrasings, named as in FEATURES, for the entry ``entry_id`` (the one the bot would answer with;
    by default the best by cosine). ``scores``: the query's ``scan.phrasing_scores`` when the search
    computed them already. An index with one entry has no second entry: its margins are taken
    against a score of 0. ``log_probabilities``: the entry classifier's log P per entry (in
    ``scan.entry_ids`` order), which adds HEAD_FEATURES."""
    by_entry = scan.phrasing_scores(query) if scores is None else scores
    best_of_entry = np.maximum.reduceat(by_entry, scan.entry_starts)
    ranked = np.argsort(-best_of_entry, kind="stable")[:TOP_ENTRIES]
    best = int(ranked[0])
    if entry_id is not None:
        group = int(np.searchsorted(scan.entry_ids, entry_id))
        if group >= len(scan.entry_ids) or scan.entry_ids[group] != entry_id:
            raise KeyError(f"entry {entry_id} is not in this index")
        if group != best:
            # Hybrid ranking put another entry first: the features describe that one against the rest.
            ranked = np.concatenate(([group], ranked[ranked != group]))[:TOP_ENTRIES]
            best = group
    top = np.pad(best_of_entry[ranked], (0, TOP_ENTRIES - len(ranked)))
    start = scan.entry_starts[best]
    end = scan.entry_starts[best + 1] if best + 1 < len(scan.entry_starts) else len(by_entry)
    own = np.sort(by_entry[start:end])
    count = min(NEIGHBOURS, len(by_entry))
    near = np.argpartition(-by_entry, count - 1)[:count] if count < len(by_entry) else np.arange(count)
    near = near[np.argsort(-by_entry[near], kind="stable")]
    in_best = (near >= start) & (near < end)
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    centroid = scan.centroids @ query
    others = np.delete(centroid, best)
    values = (
        top[0],
        top[0] - top[1],
        top[0] - top[-1],
        top.std(),
        own[-3:].mean(),
        in_best[:10].mean(),
        in_best.mean(),
        by_entry[near[:10]].mean(),
        centroid[best],
        centroid[best] - (others.max() if len(others) else 0.0),
        top[0] - scan.typical_similarity[best],
        len(_WORD.findall(text)),
    )
    features = {name: float(value) for name, value in zip(FEATURES, values, strict=True)}
    if log_probabilities is not None:
        others = np.delete(log_probabilities, best)
        features["head_logp"] = float(log_probabilities[best])
        features["head_margin"] = float(log_probabilities[best] - (others.max() if len(others) else 0.0))
        entropy = -float((np.exp(log_probabilities) * log_probabilities).sum())
        features["head_entropy"] = entropy / np.log(len(log_probabilities)) if len(log_probabilities) > 1 else 0.0
    return features

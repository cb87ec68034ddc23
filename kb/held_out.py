"""What the held-out measurements of kb_tune (kb.tuning) and the entry classifier (kb.entry_head)
share: how much of a knowledge base is held out, what it takes to measure on it, and the paired
test that says whether a difference on the same questions is beyond noise."""

from __future__ import annotations

import numpy as np

MIN_PHRASINGS = 4  # an entry needs this many to lend phrasings to both training and the held-out set
MIN_ENTRIES = 8  # trainable entries needed for in-batch negatives to mean anything
MIN_HELD_OUT = 40  # held-out in-scope questions needed to measure a difference
HOLD_OUT_SHARE = 0.2  # of each trainable entry's phrasings


def mcnemar_p(base_right: np.ndarray, tuned_right: np.ndarray) -> float:
    """Two-sided exact McNemar p-value: is the share of questions only one model gets right
    beyond what chance gives?"""
    from scipy.stats import binomtest

    only_base = int((base_right & ~tuned_right).sum())
    only_tuned = int((tuned_right & ~base_right).sum())
    if only_base + only_tuned == 0:
        return 1.0
    return float(binomtest(only_tuned, only_base + only_tuned, 0.5).pvalue)


def entry_best_scores(
    kb_vectors: np.ndarray, kb_entries: np.ndarray, queries: np.ndarray, *, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's score for each entry (its best phrasing's cosine, as live search ranks), and the
    entry ids (columns, sorted); queries are scored ``chunk`` at a time to bound memory."""
    order = np.argsort(kb_entries, kind="stable")
    entries, starts = np.unique(kb_entries[order], return_index=True)
    matrix = np.ascontiguousarray(kb_vectors[order])
    out = np.empty((len(queries), len(entries)), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        out[start : start + chunk] = np.maximum.reduceat(queries[start : start + chunk] @ matrix.T, starts, axis=1)
    return out, entries

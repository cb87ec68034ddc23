"""kb.tuning's parts that need no model: the held-out split, the measures, the paired tests and
the batches. (Training a real model: tests/kb/test_kb_tune.py.)"""

from __future__ import annotations

import random

import numpy as np
import pytest

from kb.held_out import mcnemar_p
from kb.tuning import (
    MIN_ENTRIES,
    NotEnoughPhrasings,
    Phrasing,
    TuningSplit,
    _answer_f1,
    _batches,
    f1_difference_p,
    ranking_evaluate,
    tuning_split,
)


def _phrasings(entries: int, per_entry: int) -> list[Phrasing]:
    return [Phrasing(f"entry {e} way {i}", e) for e in range(entries) for i in range(per_entry)]


def test_split_holds_out_phrasings_and_whole_entries_and_never_mixes_them():
    phrasings = _phrasings(40, 10)
    split = tuning_split(phrasings, seed=1)
    train_entries = {p.entry_id for p in split.train}
    out_entries = {p.entry_id for p in split.out_of_scope}
    assert len(out_entries) == 4 and not out_entries & train_entries
    assert {p.entry_id for p in split.held_out} <= train_entries
    assert not {p.text for p in split.held_out} & {p.text for p in split.train}
    assert len(split.held_out) == 36 * 2 and len(split.train) == 36 * 8
    assert sorted(split.train + split.held_out + split.out_of_scope, key=lambda p: p.text) == sorted(
        phrasings, key=lambda p: p.text
    )
    assert tuning_split(phrasings, seed=1) == split  # reproducible


def test_split_declines_with_too_few_phrasings_and_says_what_is_missing():
    with pytest.raises(NotEnoughPhrasings, match=f"at least {MIN_ENTRIES} such entries"):
        tuning_split(_phrasings(50, 3))
    with pytest.raises(NotEnoughPhrasings, match="held out"):
        tuning_split(_phrasings(12, 4))  # 11 entries x 1 held out < 40


def _encoder(noise: float, seed: int = 0):
    """Texts "entry E way I" embedded near entry E's own direction; other texts (out of scope)
    somewhere between entries."""
    directions = np.random.default_rng(99).normal(size=(100, 32))

    def encode(texts: list[str]) -> np.ndarray:
        rng = np.random.default_rng(seed)
        rows = []
        for text in texts:
            entry = int(text.split()[1])
            rows.append(directions[entry] + rng.normal(scale=noise, size=32))
        vectors = np.array(rows)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    return encode


def test_ranking_measures_and_paired_tests_tell_a_better_model_from_a_worse():
    split = tuning_split(_phrasings(40, 10), seed=2)
    good = ranking_evaluate(_encoder(0.3), split)
    bad = ranking_evaluate(_encoder(1.6), split)
    assert good.top1 == 1.0 and good.recall5 == 1.0 and good.mrr == 1.0
    assert bad.top1 < 0.9 and bad.mrr < 1.0 and bad.recall5 >= bad.top1
    assert mcnemar_p(bad.right, good.right) < 0.01
    assert mcnemar_p(good.right, good.right) == 1.0
    assert good.f1 > bad.f1
    assert f1_difference_p(bad, good, split, resamples=200) < 0.05
    assert f1_difference_p(good, bad, split, resamples=200) > 0.5
    # Decided as live chat decides: by an answer confidence fitted out of fold on these questions.
    # (The bad model gets too few right, 5 of 72, to learn a confidence from: its F1 is the score's.)
    assert good.decided_by == "confidence" and bad.decided_by == "score" and bad.f1 == bad.score_f1
    assert good.best_scores.min() >= 0 and good.best_scores.max() <= 1 and good.score_f1 is not None
    assert good.as_dict()["decided_by"] == "confidence"


def test_f1_falls_back_to_the_score_when_a_confidence_cannot_be_fitted():
    """With every question right and none out of scope there is no "wrong" class to learn."""
    split = tuning_split(_phrasings(40, 10), seed=2)
    in_scope_only = TuningSplit(train=split.train, held_out=split.held_out, out_of_scope=[])
    scores = ranking_evaluate(_encoder(0.3), in_scope_only)
    assert scores.top1 == 1.0 and scores.decided_by == "score" and scores.f1 == scores.score_f1
    assert np.all(scores.best_scores > 0.5)  # cosines


def test_answer_f1_respects_the_cap_and_cuts_only_between_scores():
    best = np.array([0.9, 0.8, 0.8, 0.7, 0.6])
    right = np.array([True, True, False, True, False])
    # 3 in scope; answering the top 1 gives F1 0.5, top 2 tied at 0.8 cannot be split.
    f1, threshold = _answer_f1(best, right, 3, cap=0.0)
    assert (f1, threshold) == (pytest.approx(0.5), 0.9)
    f1, threshold = _answer_f1(best, right, 3, cap=0.2)  # one wrong answer allowed
    assert threshold == 0.7 and f1 == pytest.approx(2 * 0.75 * 1.0 / 1.75)


def test_batches_hold_distinct_entries_and_every_anchor_once():
    phrasings = _phrasings(30, 7)
    batches = _batches(phrasings, 16, random.Random(0))
    seen = [i for batch in batches for i in batch]
    assert sorted(seen) == list(range(len(phrasings)))
    for batch in batches:
        entries = [phrasings[i].entry_id for i in batch]
        assert len(entries) == len(set(entries)) and len(batch) <= 16


def test_split_sizes_are_reported():
    split = TuningSplit(train=_phrasings(2, 3), held_out=_phrasings(1, 1), out_of_scope=[])
    assert split.sizes == {"entries": 2, "train_phrasings": 6, "held_out": 1, "out_of_scope": 0}

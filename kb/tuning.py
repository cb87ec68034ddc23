"""Tuning the English embedding model on the knowledge base's own phrasings (issue 12).

Every alternate phrasing of an entry is a labelled example: two phrasings of one entry should be
closer than phrasings of different entries. :func:`contrastive_train` fine-tunes a
sentence-transformers model on that with in-batch negatives (each batch holds distinct entries;
anchor and positive are two phrasings of one entry), optionally with a *hard negative* per anchor
(the most similar phrasing of the entry nearest to the anchor's own; off by default, see
TrainingSettings).

Whether tuning helped is measured on data it never saw (:func:`tuning_split`): a share of each
entry's phrasings is held out as in-scope questions, and a few whole entries are held out as
out-of-scope questions (their phrasings should not be answered by any remaining entry). Base and
tuned models are compared on the same questions: top-1, recall@5 and MRR over entries, ranked as
live search ranks them (an entry scores its best phrasing), and the answer-or-fall-back F1 at the
best threshold with wrong answers under a cap, decided as live chat decides (by the answer
confidence, fitted out of fold on the held-out questions). Paired tests say whether a difference is
beyond noise: McNemar's exact test for top-1, a paired bootstrap for F1.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kb.held_out import HOLD_OUT_SHARE, MIN_ENTRIES, MIN_HELD_OUT, MIN_PHRASINGS, entry_best_scores

OUT_OF_SCOPE_SHARE = 0.1  # of the entries, held out whole as out-of-scope questions
MAX_WRONG_RATE = 0.05  # the cap on wrong answers for the F1 comparison, as kb_calibrate's default


class NotEnoughPhrasings(ValueError):
    """The knowledge base has too few phrasings per entry to tune on (the message says what is missing)."""


@dataclass(frozen=True)
class Phrasing:
    """One phrasing and the entry it belongs to."""

    text: str
    entry_id: int


@dataclass(frozen=True)
class TuningSplit:
    """What the model trains on and what measures it."""

    train: list[Phrasing]  # also the knowledge base the held-out questions are asked against
    held_out: list[Phrasing]  # in-scope questions: their entry is in ``train``
    out_of_scope: list[Phrasing]  # phrasings of entries held out whole

    @property
    def sizes(self) -> dict[str, int]:
        """Counts, for reports."""
        return {
            "entries": len({p.entry_id for p in self.train}),
            "train_phrasings": len(self.train),
            "held_out": len(self.held_out),
            "out_of_scope": len(self.out_of_scope),
        }


def tuning_split(phrasings: Sequence[Phrasing], *, seed: int = 0) -> TuningSplit:
    """Hold out OUT_OF_SCOPE_SHARE of the entries whole and HOLD_OUT_SHARE of each other entry's
    phrasings (entries with fewer than MIN_PHRASINGS keep all theirs in training). Raises
    NotEnoughPhrasings when there is too little to train on or to measure with."""
    rng = random.Random(seed)
    by_entry: dict[int, list[Phrasing]] = defaultdict(list)
    for phrasing in phrasings:
        by_entry[phrasing.entry_id].append(phrasing)
    trainable = sorted(entry for entry, items in by_entry.items() if len(items) >= MIN_PHRASINGS)
    if len(trainable) < MIN_ENTRIES:
        raise NotEnoughPhrasings(
            f"{len(trainable)} entries have {MIN_PHRASINGS} or more phrasings: tuning needs at least "
            f"{MIN_ENTRIES} such entries (add alternate phrasings to the entries)"
        )
    entries = sorted(by_entry)
    rng.shuffle(entries)
    out_count = max(1, round(len(entries) * OUT_OF_SCOPE_SHARE))
    # Out-of-scope entries come from the trainable ones only while enough of those remain.
    out_entries = [e for e in entries if e not in trainable or len(trainable) - out_count >= MIN_ENTRIES][:out_count]
    train, held_out, out_of_scope = [], [], []
    for entry in sorted(by_entry):
        items = list(by_entry[entry])
        if entry in out_entries:
            out_of_scope.extend(items)
            continue
        rng.shuffle(items)
        keep = len(items) - (max(1, round(len(items) * HOLD_OUT_SHARE)) if len(items) >= MIN_PHRASINGS else 0)
        train.extend(items[:keep])
        held_out.extend(items[keep:])
    if len(held_out) < MIN_HELD_OUT:
        raise NotEnoughPhrasings(
            f"only {len(held_out)} phrasings can be held out to measure the tuned model: need {MIN_HELD_OUT} "
            f"(about {math.ceil(MIN_HELD_OUT / HOLD_OUT_SHARE)} phrasings over entries with {MIN_PHRASINGS}+ each)"
        )
    return TuningSplit(train=train, held_out=held_out, out_of_scope=out_of_scope)


def split_questions_only(split: TuningSplit, asked: Callable[[str], bool], what: str) -> TuningSplit:
    """``split`` with only the questions ``asked`` says are of the kind measured (e.g. those the
    multilingual model answers); the knowledge base (``train``) stays whole, as live search has it.
    Raises NotEnoughPhrasings when fewer than MIN_HELD_OUT in-scope questions remain."""
    held_out = [p for p in split.held_out if asked(p.text)]
    if len(held_out) < MIN_HELD_OUT:
        raise NotEnoughPhrasings(
            f"only {len(held_out)} held-out phrasings are {what}: need {MIN_HELD_OUT} to measure "
            f"(about {math.ceil(MIN_HELD_OUT / HOLD_OUT_SHARE)} such phrasings over entries with {MIN_PHRASINGS}+ each)"
        )
    out_of_scope = [p for p in split.out_of_scope if asked(p.text)]
    return TuningSplit(train=split.train, held_out=held_out, out_of_scope=out_of_scope)


# --- measuring -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankingScores:
    """How one model ranks the held-out questions, with per-question results for paired tests."""

    top1: float
    recall5: float
    mrr: float
    # Answer-or-fall-back F1 at the best threshold (wrong answers <= the cap) on ``best_scores``:
    # the answer confidence when it could be fitted (``decided_by``), else the best entry's score.
    f1: float
    threshold: float
    right: np.ndarray  # per in-scope question: the best entry is its own
    best_scores: np.ndarray  # per question (in scope, then out of scope): what the answer decision reads
    decided_by: str = "score"  # "confidence" or "score"
    score_f1: float | None = None  # the F1 by the best entry's score, for reference

    def as_dict(self) -> dict:
        """Rounded, for JSON."""
        data = {
            "top1": round(self.top1, 4),
            "recall5": round(self.recall5, 4),
            "mrr": round(self.mrr, 4),
            "f1": round(self.f1, 4),
            "threshold": round(self.threshold, 4),
            "decided_by": self.decided_by,
        }
        if self.score_f1 is not None:
            data["score_f1"] = round(self.score_f1, 4)
        return data


def _answer_f1(best: np.ndarray, right: np.ndarray, in_scope: int, cap: float) -> tuple[float, float]:
    """The best F1 over score thresholds, answering when the best score reaches it, with wrong
    answers (a wrong entry, or any answer to an out-of-scope question) <= ``cap`` of all questions."""
    order = np.argsort(-best, kind="stable")
    answered_right = np.cumsum(right[order])
    answered = np.arange(1, len(best) + 1)
    wrong = answered - answered_right
    precision = answered_right / answered
    recall = answered_right / max(in_scope, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    # Only cut where the score changes: tied scores are answered together.
    distinct = np.append(best[order][1:] != best[order][:-1], True)
    allowed = distinct & (wrong <= cap * len(best))
    if not allowed.any():
        return 0.0, float(best.max()) + 1e-6 if len(best) else 1.0
    position = int(np.argmax(np.where(allowed, f1, -1.0)))
    return float(f1[position]), float(best[order][position])


def ranking_evaluate(
    encode: Callable[[list[str]], np.ndarray], split: TuningSplit, *, cap: float = MAX_WRONG_RATE
) -> RankingScores:
    """Embed the split's training phrasings (the knowledge base) and its questions with ``encode``
    and measure the ranking and the answer-or-fall-back F1.

    The F1 is the one live chat would get: decided by the answer confidence (a logistic model over
    the retrieval features, kb_calibrate's, here fitted out of fold on these questions) where it can
    be fitted, else by the best score. By the score alone a tuned model can rank better and still
    lose F1, because tuning moves every cosine up and the raw score separates out-of-scope
    questions no better (BANKING77-OOS: top-1 83.9% -> 85.6%, score F1 0.529 -> 0.519)."""
    kb_vectors = encode([p.text for p in split.train])
    kb_entries = np.array([p.entry_id for p in split.train], dtype=np.int64)
    questions = split.held_out + split.out_of_scope
    question_vectors = encode([q.text for q in questions])
    scores, entries = entry_best_scores(kb_vectors, kb_entries, question_vectors)
    expected = np.array([q.entry_id for q in split.held_out], dtype=np.int64)
    in_scope = len(split.held_out)
    own = scores[np.arange(in_scope), np.searchsorted(entries, expected)]
    rank = 1 + (scores[:in_scope] > own[:, None]).sum(axis=1)  # ties in the entry's favour
    best = scores.max(axis=1)
    top = entries[scores.argmax(axis=1)]
    right = np.zeros(len(questions), dtype=bool)
    right[:in_scope] = top[:in_scope] == expected
    score_f1, score_threshold = _answer_f1(best, right, in_scope, cap)
    confidence = _confidence_out_of_fold(kb_vectors, kb_entries, question_vectors, [q.text for q in questions], right)
    if confidence is None:
        decided_by, decision, f1, threshold = "score", best, score_f1, score_threshold
    else:
        decided_by, decision = "confidence", confidence
        f1, threshold = _answer_f1(confidence, right, in_scope, cap)
    return RankingScores(
        top1=float((rank == 1).mean()),
        recall5=float((rank <= 5).mean()),
        mrr=float((1.0 / rank).mean()),
        f1=f1,
        threshold=threshold,
        right=right[:in_scope],
        best_scores=decision,
        decided_by=decided_by,
        score_f1=score_f1,
    )


CONFIDENCE_FOLDS = 5


def _confidence_out_of_fold(
    kb_vectors: np.ndarray, kb_entries: np.ndarray, question_vectors: np.ndarray, texts: list[str], right: np.ndarray
) -> np.ndarray | None:
    """P(the best entry is right) for each question, from a logistic model over its retrieval
    features (kb.retrieval_features, as the answer confidence) fitted on the other folds; None
    when either class has too few questions to fit one."""
    if min(int(right.sum()), int((~right).sum())) < 2 * CONFIDENCE_FOLDS:
        return None
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Here, not at the top: kb.vector_index imports kb.entry_head, which imports this module.
    from kb.retrieval_features import FEATURES, retrieval_features
    from kb.vector_index import EntryScan, build_index

    ids = np.arange(1, len(kb_vectors) + 1, dtype=np.int64)
    # Kept in a name while the scan is used: the scan reads the vectors this index object owns.
    index = build_index(kb_vectors, ids, kb_vectors.shape[1])
    scan = EntryScan.of(index, dict(zip(ids.tolist(), kb_entries.tolist(), strict=True)))
    x = np.array(
        [
            [values[name] for name in FEATURES]
            for values in (
                retrieval_features(scan, vector, text) for vector, text in zip(question_vectors, texts, strict=True)
            )
        ],
        dtype=float,
    )
    folds = StratifiedKFold(n_splits=CONFIDENCE_FOLDS, shuffle=True, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return cross_val_predict(model, x, right, cv=folds, method="predict_proba")[:, 1]


def f1_difference_p(
    base: RankingScores, tuned: RankingScores, split: TuningSplit, *, resamples: int = 1000, seed: int = 0
) -> float:
    """One-sided paired bootstrap p-value that tuned's F1 is not above base's: questions are
    resampled together (the same questions for both models), thresholds chosen anew each time."""
    rng = np.random.default_rng(seed)
    in_scope = len(split.held_out)
    n = len(base.best_scores)
    right_base = np.zeros(n, dtype=bool)
    right_base[:in_scope] = base.right
    right_tuned = np.zeros(n, dtype=bool)
    right_tuned[:in_scope] = tuned.right
    not_better = 0
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        scope = int((pick < in_scope).sum())
        f1_base, _ = _answer_f1(base.best_scores[pick], right_base[pick], scope, MAX_WRONG_RATE)
        f1_tuned, _ = _answer_f1(tuned.best_scores[pick], right_tuned[pick], scope, MAX_WRONG_RATE)
        not_better += f1_tuned <= f1_base
    return (not_better + 1) / (resamples + 1)


# --- training --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSettings:
    """The recipe (measured on BANKING77 in bench/bench_tune.py)."""

    epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 3e-5
    warmup_share: float = 0.1
    scale: float = 20.0  # the softmax temperature's inverse, as sentence-transformers' MNRL
    max_seq_length: int = 64  # BANKING77: 35 of 13,083 texts are longer; top-1 is the same as at 256
    # Off by default: on BANKING77 they cost 1.5x per step and did worse (92.56% against 92.89%
    # without): the nearest phrasings of other entries are often near-paraphrases, i.e. label noise.
    hard_negatives: bool = False
    min_batch: int = 8  # smaller batches (the tail of an entry with many phrasings) teach nothing
    max_grad_norm: float = 1.0
    seed: int = 0


def _hard_negatives(train: Sequence[Phrasing], vectors: np.ndarray) -> list[int]:
    """For each phrasing, the index of the most similar phrasing of the entry whose centroid is
    nearest to its own entry's (the confusable neighbour)."""
    entries = np.array([p.entry_id for p in train])
    ids = np.unique(entries)
    centroids = np.vstack([vectors[entries == e].mean(axis=0) for e in ids])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    similar = centroids @ centroids.T
    np.fill_diagonal(similar, -np.inf)
    neighbour = dict(zip(ids.tolist(), ids[similar.argmax(axis=1)].tolist(), strict=True))
    rows_of = {e: np.flatnonzero(entries == e) for e in ids.tolist()}
    negatives = []
    for i, phrasing in enumerate(train):
        rows = rows_of[neighbour[phrasing.entry_id]]
        negatives.append(int(rows[np.argmax(vectors[rows] @ vectors[i])]))
    return negatives


def _batches(train: Sequence[Phrasing], batch_size: int, rng: random.Random, min_batch: int = 2) -> list[list[int]]:
    """Anchor indices in batches of distinct entries (a second phrasing of an entry already in
    the batch would be a false negative); every anchor once per epoch, except those left in a batch
    smaller than ``min_batch`` (with one entry holding many more phrasings than the rest, the last
    batches hold little but its phrasings)."""
    order = list(range(len(train)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    open_batches: list[tuple[list[int], set[int]]] = []
    for index in order:
        entry = train[index].entry_id
        for members, seen in open_batches:
            if entry not in seen:
                members.append(index)
                seen.add(entry)
                if len(members) == batch_size:
                    batches.append(members)
                    open_batches.remove((members, seen))
                break
        else:
            open_batches.append(([index], {entry}))
    batches.extend(members for members, _ in open_batches if len(members) >= max(2, min_batch))
    rng.shuffle(batches)
    return batches


def _epoch_plan(
    train: Sequence[Phrasing], batch_size: int, epochs: int, min_batch: int, rng: random.Random
) -> tuple[dict[int, list[int]], list[int], list[list[list[int]]], int]:
    """What the training loops share: each entry's rows, the anchor rows (phrasings with a sibling
    to pair with), each epoch's batches of anchor positions (:func:`_batches`) and the step count.
    Raises NotEnoughPhrasings when there is nothing to train on."""
    by_entry: dict[int, list[int]] = defaultdict(list)
    for i, phrasing in enumerate(train):
        by_entry[phrasing.entry_id].append(i)
    anchor_rows = [i for i, p in enumerate(train) if len(by_entry[p.entry_id]) >= 2]
    anchors = [train[i] for i in anchor_rows]
    plan = [_batches(anchors, batch_size, rng, min_batch) for _ in range(epochs)]
    steps = sum(len(batches) for batches in plan)
    if steps == 0:
        raise NotEnoughPhrasings("no entry has two phrasings to train on")
    return by_entry, anchor_rows, plan, steps


def _run_summary(steps: int, anchors: int, epochs: int, started: float, losses: list[float]) -> dict:
    """What a training run did, for the version's record."""
    return {
        "steps": steps,
        "anchors": anchors,
        "epochs": epochs,
        "seconds": round(time.perf_counter() - started, 1),
        "first_loss": round(float(np.mean(losses[: max(1, len(losses) // 10)])), 4),
        "last_loss": round(float(np.mean(losses[-max(1, len(losses) // 10) :])), 4),
    }


def contrastive_train(
    model,
    train: Sequence[Phrasing],
    *,
    settings: TrainingSettings | None = None,
    base_vectors: np.ndarray | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict:
    """Fine-tune a sentence-transformers ``model`` in place on ``train``: anchor i against the
    positives of the batch (a random other phrasing of each anchor's entry) and, with hard
    negatives, the batch's hard negatives (``base_vectors``, the base model's vectors of ``train``,
    pick them). ``progress(step, steps, loss)`` after each step. Returns what the run did."""
    import torch

    settings = settings or TrainingSettings()
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    negatives = None
    if settings.hard_negatives and base_vectors is not None:
        negatives = _hard_negatives(train, base_vectors)
    by_entry, anchor_rows, epochs, steps = _epoch_plan(
        train, settings.batch_size, settings.epochs, settings.min_batch, rng
    )
    model.max_seq_length = settings.max_seq_length
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    warmup = max(1, int(steps * settings.warmup_share))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup)))
    )
    device = model.device

    def embed(texts: list[str]):
        features = (getattr(model, "preprocess", None) or model.tokenize)(texts)
        # sentence-transformers adds non-tensor entries (e.g. the texts) beside the model inputs.
        features = {key: value.to(device) if hasattr(value, "to") else value for key, value in features.items()}
        out = model(features)["sentence_embedding"]
        return torch.nn.functional.normalize(out, dim=-1)

    model.train()
    started, step, losses = time.perf_counter(), 0, []
    for batches in epochs:
        for batch in batches:
            rows = [anchor_rows[i] for i in batch]
            positives = []
            for row in rows:
                siblings = [j for j in by_entry[train[row].entry_id] if j != row]
                positives.append(rng.choice(siblings))
            texts = [train[r].text for r in rows] + [train[p].text for p in positives]
            batch_entries = torch.tensor([train[r].entry_id for r in rows])
            if negatives is not None:
                hard = [negatives[r] for r in rows]
                texts += [train[h].text for h in hard]
            vectors = embed(texts)
            size = len(rows)
            logits = settings.scale * vectors[:size] @ vectors[size:].T
            if negatives is not None:
                # A hard negative of another anchor may be a phrasing of this anchor's entry: not a negative.
                hard_entries = torch.tensor([train[h].entry_id for h in hard])
                same = batch_entries[:, None] == hard_entries[None, :]
                logits[:, size:] = logits[:, size:].masked_fill(same, float("-inf"))
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(size))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step, steps, losses[-1])
    model.eval()
    return _run_summary(steps, len(anchor_rows), settings.epochs, started, losses)


# --- an adapter over a frozen model ----------------------------------------------------------


@dataclass(frozen=True)
class AdapterSettings:
    """The recipe for a linear map over frozen vectors (the multilingual USE, which cannot be
    trained here; measured in bench/bench_zh_models.py)."""

    epochs: int = 8
    batch_size: int = 128  # at most one phrasing per entry in a batch, so fewer with few entries
    learning_rate: float = 1e-3
    temperature: float = 0.05
    # Pulls the map back toward the identity: a few hundred phrasings cannot pin down 512 x 512
    # numbers, and what the frozen model already knows should stay unless the data says otherwise.
    identity_weight: float = 1e-2
    seed: int = 0


def adapter_apply(vectors: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """``vectors`` through the linear map ``weight`` (None: unchanged), back to unit length."""
    if weight is None:
        return vectors
    mapped = vectors @ weight.T
    mapped /= np.maximum(np.linalg.norm(mapped, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(mapped, dtype=np.float32)


def adapter_train(
    vectors: np.ndarray,
    train: Sequence[Phrasing],
    *,
    settings: AdapterSettings | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[np.ndarray, dict]:
    """A d x d map from the identity over the frozen unit ``vectors`` of ``train`` (row i is
    train[i]'s): in-batch contrastive, as :func:`contrastive_train` (anchor against a random other
    phrasing of its entry, the batch's other entries' positives the negatives), both directions.
    Returns the map and what the run did."""
    import torch

    settings = settings or AdapterSettings()
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    by_entry, anchor_rows, epochs, steps = _epoch_plan(train, settings.batch_size, settings.epochs, 2, rng)
    frozen = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    dim = frozen.shape[1]
    identity = torch.eye(dim)
    weight = torch.nn.Parameter(identity.clone())
    cross_entropy = torch.nn.functional.cross_entropy
    optimizer = torch.optim.Adam([weight], lr=settings.learning_rate)
    started, step, losses = time.perf_counter(), 0, []
    for batches in epochs:
        for batch in batches:
            rows = [anchor_rows[i] for i in batch]
            positives = [rng.choice([j for j in by_entry[train[r].entry_id] if j != r]) for r in rows]
            a = torch.nn.functional.normalize(frozen[rows] @ weight.T, dim=1)
            b = torch.nn.functional.normalize(frozen[positives] @ weight.T, dim=1)
            logits = a @ b.T / settings.temperature
            targets = torch.arange(len(rows))
            both_ways = (cross_entropy(logits, targets) + cross_entropy(logits.T, targets)) / 2
            loss = both_ways + settings.identity_weight * ((weight - identity) ** 2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step, steps, losses[-1])
    return weight.detach().numpy().astype(np.float32), _run_summary(
        steps, len(anchor_rows), settings.epochs, started, losses
    )

"""One kb_tune run: the knowledge base's English phrasings in, a measured model version out, and a
switch to it only when it is better beyond noise (kb.tuning does the learning and measuring).

A run trains from the base model (not from an earlier tuned version, so versions do not drift),
measures it against the *active* version on the same held-out questions, saves it under
settings.KB_MODEL_DIR as a new EmbeddingModel, and then either embeds every phrasing with it
(stored beside the active vectors) and switches atomically, or records why not and deletes its
files (a refused version keeps its scores, not its 90 MB).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from kb import services
from kb.embedders import embedder_for, model_path_resolve
from kb.embedding_models import embedding_model_active, model_vectors_store
from kb.language import detect_language
from kb.models import EmbeddingModel, Variant
from kb.tuning import (
    NotEnoughPhrasings,
    Phrasing,
    TrainingSettings,
    contrastive_train,
    f1_difference_p,
    mcnemar_p,
    ranking_evaluate,
    tuning_split,
)

logger = logging.getLogger(__name__)

SIGNIFICANCE = 0.05  # both paired tests must reach it for a switch
PROGRESS_SECONDS = 5.0  # how often a run writes its progress to its row


@dataclass(frozen=True)
class TuneOutcome:
    """What a run did."""

    model: EmbeddingModel | None  # None when it declined before training
    switched: bool
    reason: str


Progress = Callable[[str, int, int], None]  # (stage, done, total)


def english_phrasings() -> list[Phrasing]:
    """The published English entries' phrasings that read as English (the model tuned is the English
    one; Chinese questions are embedded by the multilingual model)."""
    rows = Variant.objects.filter(entry__is_published=True, entry__language="en").values_list("text", "entry_id")
    return [Phrasing(text, entry_id) for text, entry_id in rows if detect_language(text) == "en"]


def _sentence_model(path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


def _encoder(model):
    def encode(texts: list[str]):
        return model.encode(
            list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    return encode


def _next_label() -> str:
    last = (
        EmbeddingModel.objects.filter(label__startswith="tuned-").order_by("-id").values_list("id", flat=True).first()
    )
    return f"tuned-{(last or 0) + 1}"


def kb_tune(
    *, training: TrainingSettings | None = None, switch: bool = True, progress: Progress | None = None
) -> TuneOutcome:
    """Tune, measure, and switch if better (see the module docstring). A knowledge base too small to
    tune is declined (the outcome says why). While it runs, the new version's row is in state
    "training" with its progress; an error leaves it "failed" with the error, and re-raises."""
    training = training or TrainingSettings()
    try:
        split = tuning_split(english_phrasings(), seed=training.seed)
    except NotEnoughPhrasings as exc:
        return TuneOutcome(model=None, switched=False, reason=f"declined: {exc}")
    # A run that died (worker killed) left its row training: it is not coming back.
    EmbeddingModel.objects.filter(state=EmbeddingModel.State.TRAINING).update(
        state=EmbeddingModel.State.FAILED, reason="the run stopped before it finished"
    )
    version = EmbeddingModel.objects.create(
        label=_next_label(), state=EmbeddingModel.State.TRAINING, data=split.sizes, parent=embedding_model_active()
    )
    last_saved = 0.0

    def report(stage: str, done: int, total: int) -> None:
        nonlocal last_saved
        if progress is not None:
            progress(stage, done, total)
        if time.monotonic() - last_saved > PROGRESS_SECONDS or done == total:
            last_saved = time.monotonic()
            EmbeddingModel.objects.filter(pk=version.pk, state=EmbeddingModel.State.TRAINING).update(
                reason=f"{stage}: {done} of {total}"
            )

    try:
        return _tune(version, split, training, switch, report)
    except BaseException as exc:
        EmbeddingModel.objects.filter(pk=version.pk, state=EmbeddingModel.State.TRAINING).update(
            state=EmbeddingModel.State.FAILED, reason=f"{type(exc).__name__}: {exc}"[:2000]
        )
        raise


def _tune(version: EmbeddingModel, split, training: TrainingSettings, switch: bool, report: Progress) -> TuneOutcome:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    active = version.parent
    base_path = model_path_resolve(settings.KB_EMBEDDER_MODEL)
    active_path = settings.KB_MODEL_DIR / active.directory if active.directory else base_path
    report("measuring the active model", 0, 1)
    active_scores = ranking_evaluate(_encoder(_sentence_model(active_path)), split)

    model = _sentence_model(base_path)
    base_vectors = _encoder(model)([p.text for p in split.train])
    started = time.perf_counter()
    run = contrastive_train(
        model,
        split.train,
        settings=training,
        base_vectors=base_vectors,
        progress=lambda step, steps, loss: report("training", step, steps),
    )
    seconds = time.perf_counter() - started
    report("measuring the tuned model", 0, 1)
    tuned_scores = ranking_evaluate(_encoder(model), split)
    p_top1 = mcnemar_p(active_scores.right, tuned_scores.right)
    p_f1 = f1_difference_p(active_scores, tuned_scores, split)
    better_top1 = tuned_scores.top1 > active_scores.top1 and p_top1 < SIGNIFICANCE
    better_f1 = tuned_scores.f1 > active_scores.f1 and p_f1 < SIGNIFICANCE
    version.scores = {
        "compared_with": active.label,
        "active": active_scores.as_dict(),
        "tuned": tuned_scores.as_dict(),
        "p_top1": round(p_top1, 4),
        "p_f1": round(p_f1, 4),
    }
    version.data = {**split.sizes, "training": {**run, **training.__dict__}}
    version.training_seconds = round(seconds, 1)
    if not (better_top1 and better_f1):
        missing = [
            f"top-1 {active_scores.top1:.1%} -> {tuned_scores.top1:.1%} (p={p_top1:.3g})" if not better_top1 else "",
            f"F1 {active_scores.f1:.3f} -> {tuned_scores.f1:.3f} (p={p_f1:.3g})" if not better_f1 else "",
        ]
        version.reason = f"not better than {active.label} beyond noise: " + "; ".join(m for m in missing if m)
        version.state = EmbeddingModel.State.REFUSED
        version.save()
        logger.info("kb_tune: %s refused: %s", version.label, version.reason)
        return TuneOutcome(model=version, switched=False, reason=version.reason)
    reason = (
        f"held-out top-1 {active_scores.top1:.1%} -> {tuned_scores.top1:.1%} (McNemar p={p_top1:.3g}), "
        f"F1 {active_scores.f1:.3f} -> {tuned_scores.f1:.3f} (bootstrap p={p_f1:.3g})"
    )
    model.save(str(settings.KB_MODEL_DIR / version.label))
    version.directory = version.label
    version.save()
    # Its vectors, stored beside the active ones (also with --no-switch: a later switch is then a copy).
    total = Variant.objects.count()
    done = 0

    def stored(count: int) -> None:
        nonlocal done
        done += count
        report("embedding the knowledge base", done, total)

    model_vectors_store(model=version, embedder=embedder_for(version.directory), progress=stored)
    version.state = EmbeddingModel.State.AVAILABLE
    version.reason = reason
    version.save()
    if not switch:
        return TuneOutcome(model=version, switched=False, reason=f"{reason}; not switched (asked not to)")
    services.embedding_model_activate(model=version, reason=f"kb_tune: {reason}")
    version.refresh_from_db()
    return TuneOutcome(model=version, switched=True, reason=reason)

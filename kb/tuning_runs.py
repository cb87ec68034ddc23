"""One kb_tune run: the knowledge base's phrasings in, a measured model version out, and a switch
to it only when it is better beyond noise (kb.tuning does the learning and measuring).

A version has two halves, each learned and judged on its own:

- the English model (MiniLM), fine-tuned on the English phrasings and measured on held-out English
  phrasings, which are the questions it answers live;
- with the language-routed embedder, a linear adapter over the multilingual USE's frozen vectors
  (USE cannot be trained here), trained on every phrasing and measured on the held-out phrasings
  that live search would embed with USE (Chinese, or anything MiniLM cannot read): an adapter
  trained on English phrasings has made Chinese questions worse before (docs/BENCHMARKS.md), so it
  must earn its place on the questions it serves.

Each half is trained from the shipped model (not from an earlier version, so versions do not
drift) and compared with the *active* version's half on the same held-out questions. A half that is
better on top-1 and F1 beyond noise is kept; the other half is the active version's, carried over.
With at least one half kept the version is saved under settings.KB_MODEL_DIR, every phrasing is
embedded with it (stored beside the active vectors) and it is switched to atomically; otherwise the
run records why and keeps no files (a refused version keeps its scores, not its 90 MB).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings
from django.utils.module_loading import import_string

from kb import services
from kb.embedders import USE_ADAPTER_FILE, LanguageRoutedEmbedder, embedder_for, model_path_resolve
from kb.embedding_models import embedding_model_active, model_vectors_store
from kb.held_out import mcnemar_p
from kb.language import detect_language
from kb.models import EmbeddingModel, Variant
from kb.tuning import (
    AdapterSettings,
    NotEnoughPhrasings,
    Phrasing,
    RankingScores,
    TrainingSettings,
    TuningSplit,
    adapter_apply,
    adapter_train,
    contrastive_train,
    f1_difference_p,
    ranking_evaluate,
    split_questions_only,
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


def all_phrasings() -> list[Phrasing]:
    """Every published entry's phrasings, in any language."""
    rows = Variant.objects.filter(entry__is_published=True).values_list("text", "entry_id")
    return [Phrasing(text, entry_id) for text, entry_id in rows]


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


@dataclass
class _Half:
    """What one half of a run (the English model, the USE adapter) came to."""

    name: str  # for reasons: "English model", "USE adapter"
    kept: bool = False
    reason: str = ""
    scores: dict | None = None
    data: dict | None = None
    seconds: float = 0.0
    write: Callable[[Path], None] | None = None  # saves the kept half into a version directory
    extra: dict = field(default_factory=dict)


def _plans(seed: int) -> tuple[TuningSplit | str, TuningSplit | str]:
    """The English half's split and the adapter half's, or why each is declined."""
    try:
        english: TuningSplit | str = tuning_split(english_phrasings(), seed=seed)
    except NotEnoughPhrasings as exc:
        english = str(exc)
    if import_string(settings.KB_EMBEDDER) is not LanguageRoutedEmbedder:
        return english, f"{settings.KB_EMBEDDER} has no multilingual half to adapt"
    try:
        routed = embedder_for(embedding_model_active().directory)
        split = tuning_split(all_phrasings(), seed=seed)
        adapter: TuningSplit | str = split_questions_only(
            split,
            lambda text: routed.query_weight(text) == 0.0,
            "questions the multilingual model answers (not English)",
        )
    except NotEnoughPhrasings as exc:
        adapter = str(exc)
    return english, adapter


def kb_tune(
    *,
    training: TrainingSettings | None = None,
    adapter: AdapterSettings | None = None,
    switch: bool = True,
    progress: Progress | None = None,
) -> TuneOutcome:
    """Tune, measure, and switch if better (see the module docstring). A knowledge base too small to
    tune either half on is declined (the outcome says why). While it runs, the new version's row is
    in state "training" with its progress; an error leaves it "failed" with the error, and re-raises."""
    training = training or TrainingSettings()
    adapter = adapter or AdapterSettings(seed=training.seed)
    english_plan, adapter_plan = _plans(training.seed)
    if isinstance(english_plan, str) and isinstance(adapter_plan, str):
        return TuneOutcome(
            model=None, switched=False, reason=f"declined: English model: {english_plan}; USE adapter: {adapter_plan}"
        )
    # A run that died (worker killed) left its row training: it is not coming back.
    EmbeddingModel.objects.filter(state=EmbeddingModel.State.TRAINING).update(
        state=EmbeddingModel.State.FAILED, reason="the run stopped before it finished"
    )
    sizes = english_plan.sizes if isinstance(english_plan, TuningSplit) else {}
    version = EmbeddingModel.objects.create(
        label=_next_label(), state=EmbeddingModel.State.TRAINING, data=sizes, parent=embedding_model_active()
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
        english = (
            _Half("English model", reason=f"declined: {english_plan}")
            if isinstance(english_plan, str)
            else _english_half(version.parent, english_plan, training, report)
        )
        use = (
            _Half("USE adapter", reason=f"declined: {adapter_plan}")
            if isinstance(adapter_plan, str)
            else _adapter_half(version.parent, adapter_plan, adapter, report)
        )
        return _conclude(version, english, use, switch, report)
    except BaseException as exc:
        EmbeddingModel.objects.filter(pk=version.pk, state=EmbeddingModel.State.TRAINING).update(
            state=EmbeddingModel.State.FAILED, reason=f"{type(exc).__name__}: {exc}"[:2000]
        )
        shutil.rmtree(settings.KB_MODEL_DIR / version.label, ignore_errors=True)
        raise


def _version_path(version: EmbeddingModel | None) -> Path | None:
    return settings.KB_MODEL_DIR / version.directory if version is not None and version.directory else None


def _judge(half: _Half, active: EmbeddingModel, before: RankingScores, after: RankingScores, split) -> None:
    """Keep the half only when top-1 and F1 are both better beyond noise."""
    p_top1 = mcnemar_p(before.right, after.right)
    p_f1 = f1_difference_p(before, after, split)
    better_top1 = after.top1 > before.top1 and p_top1 < SIGNIFICANCE
    better_f1 = after.f1 > before.f1 and p_f1 < SIGNIFICANCE
    half.scores = {
        "compared_with": active.label,
        "active": before.as_dict(),
        "tuned": after.as_dict(),
        "p_top1": round(p_top1, 4),
        "p_f1": round(p_f1, 4),
    }
    half.kept = better_top1 and better_f1
    if half.kept:
        half.reason = (
            f"held-out top-1 {before.top1:.1%} -> {after.top1:.1%} (McNemar p={p_top1:.3g}), "
            f"F1 {before.f1:.3f} -> {after.f1:.3f} (bootstrap p={p_f1:.3g})"
        )
        return
    missing = [
        f"top-1 {before.top1:.1%} -> {after.top1:.1%} (p={p_top1:.3g})" if not better_top1 else "",
        f"F1 {before.f1:.3f} -> {after.f1:.3f} (p={p_f1:.3g})" if not better_f1 else "",
    ]
    half.reason = f"not better than {active.label} beyond noise: " + "; ".join(m for m in missing if m)


def _english_half(active: EmbeddingModel, split: TuningSplit, training: TrainingSettings, report: Progress) -> _Half:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    base_path = model_path_resolve(settings.KB_EMBEDDER_MODEL)
    active_dir = _version_path(active)
    # An adapter-only version runs the shipped English model.
    active_path = active_dir if active_dir is not None and (active_dir / "modules.json").exists() else base_path
    report("measuring the active English model", 0, 1)
    active_scores = ranking_evaluate(_encoder(_sentence_model(active_path)), split)

    model = _sentence_model(base_path)
    base_vectors = _encoder(model)([p.text for p in split.train])
    started = time.perf_counter()
    run = contrastive_train(
        model,
        split.train,
        settings=training,
        base_vectors=base_vectors,
        progress=lambda step, steps, loss: report("training the English model", step, steps),
    )
    half = _Half("English model", seconds=time.perf_counter() - started)
    report("measuring the tuned English model", 0, 1)
    _judge(half, active, active_scores, ranking_evaluate(_encoder(model), split), split)
    half.data = {**split.sizes, "training": {**run, **training.__dict__}}
    half.write = lambda directory: model.save(str(directory))
    return half


def _adapter_half(active: EmbeddingModel, split: TuningSplit, recipe: AdapterSettings, report: Progress) -> _Half:
    routed = embedder_for(active.directory)
    active_dir = _version_path(active)
    active_file = active_dir / USE_ADAPTER_FILE if active_dir is not None else None
    active_map = np.load(active_file) if active_file is not None and active_file.exists() else None
    texts = list(dict.fromkeys(p.text for p in [*split.train, *split.held_out, *split.out_of_scope]))
    frozen: dict[str, np.ndarray] = {}
    for start in range(0, len(texts), 256):
        chunk = texts[start : start + 256]
        frozen.update(zip(chunk, routed.multilingual_model.encode(chunk), strict=True))
        report("embedding phrasings with the multilingual model", min(start + 256, len(texts)), len(texts))

    def encoder(weight: np.ndarray | None):
        return lambda batch: adapter_apply(np.vstack([frozen[text] for text in batch]), weight)

    active_scores = ranking_evaluate(encoder(active_map), split)
    started = time.perf_counter()
    weight, run = adapter_train(
        np.vstack([frozen[p.text] for p in split.train]),
        split.train,
        settings=recipe,
        progress=lambda step, steps, loss: report("training the USE adapter", step, steps),
    )
    half = _Half("USE adapter", seconds=time.perf_counter() - started)
    _judge(half, active, active_scores, ranking_evaluate(encoder(weight), split), split)
    half.data = {**split.sizes, "training": {**run, **recipe.__dict__}}
    half.write = lambda directory: np.save(directory / USE_ADAPTER_FILE, weight)
    return half


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _conclude(version: EmbeddingModel, english: _Half, use: _Half, switch: bool, report: Progress) -> TuneOutcome:
    active = version.parent
    version.scores = {**(english.scores or {}), **({"use_adapter": use.scores} if use.scores else {})}
    version.data = {**(english.data or {}), **({"use_adapter": use.data} if use.data else {})}
    version.training_seconds = round(english.seconds + use.seconds, 1) or None
    reasons = "; ".join(
        f"{half.name} {half.reason}" if half.scores else f"{half.name}: {half.reason}" for half in (english, use)
    )
    if not (english.kept or use.kept):
        version.reason = reasons
        version.state = EmbeddingModel.State.REFUSED
        version.save()
        logger.info("kb_tune: %s refused: %s", version.label, version.reason)
        return TuneOutcome(model=version, switched=False, reason=version.reason)
    directory = settings.KB_MODEL_DIR / version.label
    directory.mkdir(parents=True, exist_ok=True)
    active_dir = _version_path(active)
    if english.kept:
        english.write(directory)
    elif active_dir is not None and (active_dir / "modules.json").exists():
        # The active version's tuned English model carries over, linked rather than copied.
        shutil.rmtree(directory)
        shutil.copytree(
            active_dir, directory, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(USE_ADAPTER_FILE)
        )
    if use.kept:
        use.write(directory)
    elif active_dir is not None and (active_dir / USE_ADAPTER_FILE).exists():
        shutil.copy2(active_dir / USE_ADAPTER_FILE, directory / USE_ADAPTER_FILE)
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
    version.reason = reasons
    version.save()
    if not switch:
        return TuneOutcome(model=version, switched=False, reason=f"{reasons}; not switched (asked not to)")
    services.embedding_model_activate(model=version, reason=f"kb_tune: {reasons}")
    version.refresh_from_db()
    return TuneOutcome(model=version, switched=True, reason=reasons)

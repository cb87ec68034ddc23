"""KB-tuned embeddings and the entry classifier on BANKING77 (issue 12, items 1 and 5): the base
English model against the same model fine-tuned on the knowledge base's phrasings by kb_tune's
recipe (kb.tuning.contrastive_train), each ranked by cosine alone and with the entry classifier
that publishing an index fits (kb.entry_head).

The knowledge base is BANKING77's 10,003 training questions (77 entries, one per intent); the
questions are its 3,080 test questions, never trained on. Everything runs through the product:
phrasings and questions are embedded by the configured embedder (the language-routed one, questions
on the 8-bit model), the classifier is fitted by kb.entry_head.entry_head_fit exactly as
kb.services.index_publish fits it (its weight chosen on held-out *training* phrasings), and
questions are ranked by kb.selectors.index_entries_rank. Reported: top-1, recall@5 and MRR over
entries, McNemar's exact test on per-question top-1, the training and fitting times on this machine
(2 cores, torch on every core as kb_tune uses it).

Run: .venv/bin/python bench/bench_tune.py [--epochs N] [--hard-negatives] [--no-tuning | --tuned-from DIR]
(part of `make bench`)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import Timer, save, table  # noqa: E402
from bench.retrieval_common import (  # noqa: E402
    RankConfig,
    banking77_load,
    django_setup,
    index_load,
    mcnemar,
    queries_rank_many,
    rankings_score,
    texts_encode,
)


def _measure(embedder, kb) -> dict:
    """Cosine alone and cosine + entry classifier for ``embedder``, through the product's steps."""
    import numpy as np

    from kb.entry_head import INPUTS, entry_head_fit, phrasing_head_rows, question_head_inputs, rerank_head_rows

    vectors, phrasing_seconds = texts_encode(embedder, kb.phrasings)
    questions, question_seconds = texts_encode(embedder, kb.queries, queries=True)
    index = index_load(vectors=vectors, kb=kb, keyword=False)
    configs, names, out = [RankConfig(index=index, vectors=questions, hybrid=False)], ["cosine"], {}
    # The classifier reading each input (KB_ENTRY_CLASSIFIER_INPUT), side by side.
    for reads in INPUTS:
        with Timer() as fit_timer:
            rows, row_queries, row_phrasing = phrasing_head_rows(embedder, vectors, kb.phrasings, reads)
            fitted = entry_head_fit(
                vectors,
                kb.phrasing_entry_ids,
                rows,
                row_queries,
                row_phrasing,
                reads=reads,
                rerank_rows=rerank_head_rows(embedder, vectors, kb.phrasings, reads),
            )
        with Timer() as inputs_timer:
            head_inputs = question_head_inputs(embedder, kb.queries, questions, reads)
        rerank_inputs = None
        if fitted.head is not None and fitted.head.rerank is not None:
            # All of them here; live search makes the USE call for the re-ranked questions only
            # (their share is reported below).
            rerank_inputs = question_head_inputs(embedder, kb.queries, questions, fitted.head.rerank.reads)
        print(f"  classifier reading {reads}: {fitted.report}", flush=True)
        out[f"fit_{reads}"] = {**fitted.report, "wall_seconds": round(fit_timer.seconds, 1)}
        out[f"head_input_ms_per_question_{reads}"] = round(inputs_timer.seconds * 1000 / max(len(kb.queries), 1), 3)
        if fitted.head is not None:
            names.append(f"classifier_{reads}")
            configs.append(
                RankConfig(
                    index=dataclasses.replace(index, head=fitted.head),
                    vectors=questions,
                    hybrid=False,
                    head_inputs=head_inputs,
                    rerank_inputs=rerank_inputs,
                )
            )
    ranked = queries_rank_many(configs=configs, queries=kb.queries, k=10)
    for name, result in zip(names, ranked, strict=True):
        right = np.array(
            [bool(r) and r[0].entry_id == e for r, e in zip(result.entries, kb.query_entry_ids, strict=True)]
        )
        out[name] = {
            **rankings_score(result.entries, kb.query_entry_ids),
            "right": right,
            "rank_ms_p50": round(float(np.percentile(result.latency_ms, 50)), 3),
            "reranked_share": round(float(result.reranked.mean()), 4),
        }
    out["embed_seconds"] = round(phrasing_seconds + question_seconds, 1)
    return out


def _train(kb, training) -> tuple[str, dict, float]:
    """kb_tune's recipe on every BANKING77 training phrasing; the model saved as a model version
    directory under a temporary KB_MODEL_DIR. Returns the directory name, the run and its seconds."""
    import torch
    from django.conf import settings
    from sentence_transformers import SentenceTransformer

    from kb.embedders import model_path_resolve
    from kb.tuning import Phrasing, contrastive_train

    torch.set_num_threads(os.cpu_count() or 1)
    phrasings = [Phrasing(text, int(entry)) for text, entry in zip(kb.phrasings, kb.phrasing_entry_ids, strict=True)]
    model = SentenceTransformer(
        str(model_path_resolve(settings.KB_EMBEDDER_MODEL)), device="cpu", local_files_only=True
    )
    base_vectors = None
    if training.hard_negatives:
        base_vectors = model.encode([p.text for p in phrasings], batch_size=64, normalize_embeddings=True)
    with Timer() as timer:
        run = contrastive_train(
            model,
            phrasings,
            settings=training,
            base_vectors=base_vectors,
            progress=lambda step, steps, loss: (
                None if step % 20 else print(f"  step {step}/{steps} loss {loss:.3f}", flush=True)
            ),
        )
    settings.KB_MODEL_DIR = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    model.save(str(settings.KB_MODEL_DIR / "tuned"))
    torch.set_num_threads(1)
    return "tuned", run, timer.seconds


def _classifier_rows(label: str, measured: dict) -> list[tuple]:
    rows = []
    for reads in ("question", "gated", "both"):
        fit = measured[f"fit_{reads}"]
        if f"classifier_{reads}" in measured:
            time_note = f"fit {fit['wall_seconds']} s"
            if reads == "gated":
                time_note += f", {measured['classifier_gated']['reranked_share']:.0%} re-ranked"
            rows.append(_row(f"{label} + entry classifier reading {reads}", measured[f"classifier_{reads}"], time_note))
    return rows


def _row(name: str, scores: dict, extra: str) -> tuple:
    return (name, f"{scores['top1']:.2%}", f"{scores['recall5']:.2%}", f"{scores['mrr']:.4f}", extra)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--hard-negatives", action="store_true")
    parser.add_argument(
        "--no-tuning", action="store_true", help="the base model only (with and without the classifier)"
    )
    parser.add_argument(
        "--tuned-from",
        type=Path,
        help="measure the tuned model saved by an earlier run (a folder holding tuned/) instead of training",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    django_setup()
    from django.conf import settings

    from kb.embedders import embedder_for
    from kb.entry_head import INPUTS
    from kb.tuning import TrainingSettings

    kb = banking77_load()
    print("base model", flush=True)
    base = _measure(embedder_for(""), kb)
    rows = [_row("base (all-MiniLM-L6-v2), cosine", base["cosine"], "-")] + _classifier_rows("base", base)
    result = {
        "data": {"kb_phrasings": len(kb.phrasings), "entries": len(kb.entry_names), "test_questions": len(kb.queries)},
        "base": base,
    }
    comparisons = {
        f"base: classifier ({reads}) vs cosine": ("base", "cosine", "base", f"classifier_{reads}") for reads in INPUTS
    }
    comparisons["base: classifier both vs question"] = ("base", "classifier_question", "base", "classifier_both")
    comparisons["base: classifier gated vs question"] = ("base", "classifier_question", "base", "classifier_gated")
    if not args.no_tuning:
        defaults = TrainingSettings()
        training = TrainingSettings(epochs=args.epochs or defaults.epochs, hard_negatives=args.hard_negatives)
        print(f"training ({training.epochs} epoch(s))", flush=True)
        if args.tuned_from:
            settings.KB_MODEL_DIR, directory, run, seconds = (
                args.tuned_from,
                "tuned",
                {"reused": str(args.tuned_from)},
                0.0,
            )
        else:
            directory, run, seconds = _train(kb, training)
        tuned = _measure(embedder_for(directory), kb)
        label = f"tuned ({training.epochs} epoch, {'hard negatives' if training.hard_negatives else 'in-batch only'})"
        rows += [_row(f"{label}, cosine", tuned["cosine"], f"training {seconds / 60:.1f} min")]
        rows += _classifier_rows(label, tuned)
        result["training"] = {**training.__dict__, **run, "wall_seconds": round(seconds, 1)}
        result["tuned"] = tuned
        comparisons["cosine: tuned vs base"] = ("base", "cosine", "tuned", "cosine")
        for reads in INPUTS:
            comparisons[f"tuned: classifier ({reads}) vs cosine"] = ("tuned", "cosine", "tuned", f"classifier_{reads}")
            comparisons[f"tuned + classifier ({reads}) vs base cosine"] = (
                "base",
                "cosine",
                "tuned",
                f"classifier_{reads}",
            )
        comparisons["tuned: classifier both vs question"] = ("tuned", "classifier_question", "tuned", "classifier_both")
        comparisons["tuned: classifier gated vs question"] = (
            "tuned",
            "classifier_question",
            "tuned",
            "classifier_gated",
        )
    print()
    print(table(rows, ("model", "top-1", "recall@5", "MRR", "time")))
    result["mcnemar"] = {}
    for name, (a, a_kind, b, b_kind) in comparisons.items():
        first, second = result[a].get(a_kind), result[b].get(b_kind)
        if first is None or second is None:
            continue
        result["mcnemar"][name] = mcnemar(first["right"], second["right"])
        print(f"McNemar {name}: {result['mcnemar'][name]}")
    for part in ("base", "tuned"):
        for kind in ("cosine", *(f"classifier_{reads}" for reads in INPUTS)):
            if part in result and kind in result[part]:
                result[part][kind].pop("right")
    print(f"saved {save('tune', result).relative_to(settings.BASE_DIR)}")


if __name__ == "__main__":
    main()

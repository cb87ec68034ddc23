"""KB-tuned embeddings on BANKING77 (issue 12, item 5): the base English model against the same
model fine-tuned on the knowledge base's phrasings by kb_tune's recipe (kb.tuning.contrastive_train).

The knowledge base is BANKING77's 10,003 training questions (77 entries, one per intent); the
questions are its 3,080 test questions, never trained on. Ranking as live search ranks: an entry
scores its best phrasing's cosine. Reported for both models: top-1, recall@5 and MRR over entries,
McNemar's exact test on per-question top-1, and the training time on this machine (2 cores, torch
on every core as kb_tune uses it).

Run: .venv/bin/python bench/bench_tune.py [--epochs N] [--hard-negatives]   (part of `make bench`)
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import DATA, Timer, save, table  # noqa: E402


def _rows(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as handle:
        return [(row["text"], row["category"]) for row in csv.DictReader(handle)]


def _measure(encode, kb: list, questions: list) -> dict:
    """kb.tuning.ranking_evaluate with BANKING77's test questions as the held-out ones (no
    out-of-scope questions here), timed."""
    from kb.tuning import TuningSplit, ranking_evaluate

    with Timer() as timer:
        scores = ranking_evaluate(encode, TuningSplit(train=kb, held_out=questions, out_of_scope=[]))
    return {
        "top1": scores.top1,
        "recall5": scores.recall5,
        "mrr": scores.mrr,
        "right": scores.right,
        "embed_seconds": round(timer.seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--hard-negatives", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import django

    django.setup()
    import torch
    from django.conf import settings
    from sentence_transformers import SentenceTransformer

    from kb.embedders import model_path_resolve
    from kb.tuning import Phrasing, TrainingSettings, contrastive_train, mcnemar_p

    torch.set_num_threads(os.cpu_count() or 1)
    train, test = _rows(DATA / "banking77" / "train.csv"), _rows(DATA / "banking77" / "test.csv")
    ids = {name: i for i, name in enumerate(sorted({label for _, label in train}))}
    phrasings = [Phrasing(text, ids[label]) for text, label in train]
    questions = [Phrasing(text, ids[label]) for text, label in test]
    path = str(model_path_resolve(settings.KB_EMBEDDER_MODEL))

    def encoder(model):
        return lambda texts: model.encode(
            list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    base_model = SentenceTransformer(path, device="cpu", local_files_only=True)
    base = _measure(encoder(base_model), phrasings, questions)
    print(f"base: top-1 {base['top1']:.2%}")

    defaults = TrainingSettings()
    training = TrainingSettings(epochs=args.epochs or defaults.epochs, hard_negatives=args.hard_negatives)
    tuned_model = SentenceTransformer(path, device="cpu", local_files_only=True)
    base_vectors = encoder(base_model)([p.text for p in phrasings]) if training.hard_negatives else None
    steps_done = []
    with Timer() as training_timer:
        run = contrastive_train(
            tuned_model,
            phrasings,
            settings=training,
            base_vectors=base_vectors,
            progress=lambda step, steps, loss: (
                steps_done.append(step) if step % 20 else print(f"  step {step}/{steps} loss {loss:.3f}", flush=True)
            ),
        )
    tuned = _measure(encoder(tuned_model), phrasings, questions)
    p = mcnemar_p(base["right"], tuned["right"])
    rows = [
        ("base (all-MiniLM-L6-v2)", f"{base['top1']:.2%}", f"{base['recall5']:.2%}", f"{base['mrr']:.4f}", "-"),
        (
            f"tuned ({training.epochs} epoch, {'hard negatives' if training.hard_negatives else 'in-batch only'})",
            f"{tuned['top1']:.2%}",
            f"{tuned['recall5']:.2%}",
            f"{tuned['mrr']:.4f}",
            f"{training_timer.seconds / 60:.1f} min",
        ),
    ]
    print()
    print(table(rows, ("model", "top-1", "recall@5", "MRR", "training")))
    print(f"McNemar p = {p:.3g} (top-1, paired by question); {run['steps']} steps")
    result = {
        "data": {"kb_phrasings": len(train), "entries": len(ids), "test_questions": len(test)},
        "training": {**training.__dict__, **run, "wall_seconds": round(training_timer.seconds, 1)},
        "base": {k: v for k, v in base.items() if k != "right"},
        "tuned": {k: v for k, v in tuned.items() if k != "right"},
        "mcnemar_p": p,
    }
    print(f"saved {save('tune', result).relative_to(settings.BASE_DIR)}")


if __name__ == "__main__":
    main()

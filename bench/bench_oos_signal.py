"""Feasibility of a learned answer-or-fall-back signal on BANKING77-OOS.

The decision step answers when the best entry's cosine reaches a threshold. This benchmark asks
whether a small classifier over cheap retrieval features (all from the one question embedding and
the one scan of the published index that live search already does) separates "the best entry is
right" from "out of scope or wrong entry" better than that cosine alone.

Setup as bench_calibration.py: the 50 in-scope intents' training questions (`banking77-oos/train`)
are imported as the knowledge base (one entry per intent) into an isolated database and embedded by
the real services. Every validation and test question (in scope, in-domain out-of-scope, general
out-of-scope) is embedded once; its scores against every stored phrasing give the features.

Signals compared, each reduced to one threshold (answer when signal >= threshold, else fall back):
top cosine alone, kNN vote share alone, logistic regression and gradient-boosted trees on the
features. The classifiers learn P(best entry is right) on validation; their threshold is chosen on
5-fold out-of-fold validation predictions, then they are refitted on all of validation and applied
to test. Every threshold is chosen by chatbot.evaluation.calibration.thresholds_calibrate (maximum
F1 with wrong answers <= 5% of questions) and every number is thresholds_evaluate's, so they compare
with bench_calibration.py. For reference, the current decision step with its "did you mean" lists
(answer / clarify / margin, calibrated the same way on the same questions) is shown too.

Run: .venv/bin/python bench/bench_oos_signal.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import DATA, Timer, banking77_oos_kb_load, isolated_environment, save, table  # noqa: E402
from kb.retrieval_features import FEATURES as RETRIEVAL_FEATURES  # noqa: E402
from kb.retrieval_features import retrieval_features  # noqa: E402

OOS = DATA / "banking77-oos"
VALID = {"in scope": OOS / "valid", "in-domain OOS": OOS / "id-oos" / "valid", "general OOS": OOS / "ood-oos" / "valid"}
TEST = {"in scope": OOS / "test", "in-domain OOS": OOS / "id-oos" / "test", "general OOS": OOS / "ood-oos" / "test"}
MAX_WRONG_RATE = 0.05
MAX_CLARIFY_RATE = 0.10
TOP_ENTRIES = 5  # entries kept per question, as settings.KB_SEARCH_TOP_K
SEED = 0
FOLDS = 5

# The product's retrieval features (kb.retrieval_features), and which model embedded the question.
FEATURES = (*RETRIEVAL_FEATURES, "minilm")  # minilm: 1 if MiniLM (English), 0 if the multilingual USE


@dataclass
class Question:
    text: str
    group: str
    expected: frozenset[int]  # empty = out of scope
    vector: np.ndarray | None = None
    features: np.ndarray | None = None
    entries: tuple[int, ...] = ()  # top entries, best first
    scores: tuple[float, ...] = ()


def questions_read(files: dict[str, Path], expected_of) -> list[Question]:
    from chatbot.evaluation.labelled import is_out_of_scope, labelled_rows_read

    questions = []
    for group, path in files.items():
        for row in labelled_rows_read(path):
            text = row["question"].strip()
            if not text:
                continue  # hit_test_rows skips these too
            expected = frozenset() if is_out_of_scope(row) else expected_of[row["category"].casefold()]
            questions.append(Question(text, group, expected))
    return questions


def main() -> None:
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bench-oos-signal-"))
    os.environ.update(isolated_environment("oos_signal", workdir))
    import django

    django.setup()
    from django.conf import settings
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.inspection import permutation_importance
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from chatbot.decisions import Thresholds
    from chatbot.evaluation.calibration import ScoredQuestion, thresholds_calibrate, thresholds_evaluate
    from kb.embedders import get_embedder
    from kb.models import Entry
    from kb.selectors import current_index

    with Timer() as embedding:  # import, embedding and publishing
        version = banking77_oos_kb_load(workdir)

    expected_of: dict[str, frozenset[int]] = {}
    for entry_id, category in Entry.objects.values_list("id", "category"):
        expected_of[category.casefold()] = expected_of.get(category.casefold(), frozenset()) | {entry_id}
    valid, test = questions_read(VALID, expected_of), questions_read(TEST, expected_of)
    everything = valid + test

    index = current_index.get()
    scan = index.scan
    assert scan is not None, "the benchmark's index is flat: its entry scan must exist"
    embedder = get_embedder()
    weight = getattr(embedder, "query_weight", lambda text: 1.0)
    with Timer() as embedding_questions:
        # In batches: each call is one model call per model.
        texts = [q.text for q in everything]
        vectors = np.vstack([embedder.encode_queries(texts[i : i + 128]) for i in range(0, len(texts), 128)])
    print(f"questions: {len(valid)} validation, {len(test)} test, embedded in {embedding_questions.seconds:.0f} s")

    feature_seconds = 0.0
    for number, question in enumerate(everything):
        question.vector = vectors[number]
        tick = time.perf_counter()
        values = retrieval_features(scan, question.vector, question.text)
        feature_seconds += time.perf_counter() - tick
        minilm = 1.0 if weight(question.text) > 0 else 0.0
        question.features = np.array([*(values[name] for name in RETRIEVAL_FEATURES), minilm], dtype=np.float64)
        hits = index.dense_candidates(question.vector, entries=TOP_ENTRIES)[:TOP_ENTRIES]
        question.entries = tuple(hit[1] for hit in hits)
        question.scores = tuple(hit[2] for hit in hits)
    feature_us = feature_seconds / len(everything) * 1e6

    def arrays(questions: list[Question]):
        x = np.array([q.features for q in questions])
        y = np.array([bool(q.expected) and q.entries[0] in q.expected for q in questions], dtype=int)
        return x, y

    x_valid, y_valid = arrays(valid)
    x_test, y_test = arrays(test)
    column = {name: i for i, name in enumerate(FEATURES)}

    def single(questions: list[Question], signal: np.ndarray) -> list[ScoredQuestion]:
        """Each question as a one-hit list whose score is the signal: a threshold on it is the
        whole decision (no second hit, so never a "did you mean" list)."""
        return [
            ScoredQuestion(
                language="en",
                scores=(float(value),),
                correct=(bool(q.expected) and q.entries[0] in q.expected,),
                in_scope=bool(q.expected),
            )
            for q, value in zip(questions, signal, strict=True)
        ]

    def full(questions: list[Question]) -> list[ScoredQuestion]:
        return [
            ScoredQuestion("en", q.scores, tuple(e in q.expected for e in q.entries), bool(q.expected))
            for q in questions
        ]

    def evaluate(questions: list[Question], scored: list[ScoredQuestion], thresholds: Thresholds) -> dict:
        overall = thresholds_evaluate(scored, thresholds)
        groups = {
            name: thresholds_evaluate(
                [s for q, s in zip(questions, scored, strict=True) if q.group == name], thresholds
            )
            for name in TEST
        }
        return {"overall": overall, "groups": groups}

    def logistic():
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))

    def boosted():
        return HistGradientBoostingClassifier(
            max_iter=200,
            learning_rate=0.05,
            max_leaf_nodes=15,
            min_samples_leaf=20,
            l2_regularization=1.0,
            random_state=SEED,
        )

    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=SEED)
    signals: dict[str, tuple[np.ndarray, np.ndarray, object]] = {
        "top cosine": (x_valid[:, column["top1"]], x_test[:, column["top1"]], None),
        "kNN vote (top-10 share)": (x_valid[:, column["knn10"]], x_test[:, column["knn10"]], None),
    }
    models = {}
    with Timer() as fitting:
        for name, make in (("logistic regression", logistic), ("gradient-boosted trees", boosted)):
            out_of_fold = cross_val_predict(make(), x_valid, y_valid, cv=folds, method="predict_proba")[:, 1]
            model = make().fit(x_valid, y_valid)
            models[name] = model
            signals[name] = (out_of_fold, model.predict_proba(x_test)[:, 1], model)

    results, rows = {}, []
    # Reference: the decision step as it is (answer / clarify / margin on the top-5 entry cosines).
    reference = thresholds_calibrate(
        full(valid), language="en", max_wrong_rate=MAX_WRONG_RATE, max_clarify_rate=MAX_CLARIFY_RATE
    )
    measured = evaluate(test, full(test), reference.thresholds)
    top1_auc = roc_auc_score(y_test, x_test[:, column["top1"]])
    named = [("current decision (cosine + did-you-mean)", reference, measured, top1_auc, None)]
    for name, (valid_signal, test_signal, _) in signals.items():
        calibration = thresholds_calibrate(
            single(valid, valid_signal), language="en", max_wrong_rate=MAX_WRONG_RATE, max_clarify_rate=0.0
        )
        measured = evaluate(test, single(test, test_signal), calibration.thresholds)
        brier = brier_score_loss(y_test, test_signal) if name in models else None
        named.append((name, calibration, measured, roc_auc_score(y_test, test_signal), brier))
    for name, calibration, measured, auc, brier in named:
        overall, groups = measured["overall"], measured["groups"]
        t = calibration.thresholds
        shown = f"{t.answer:.3f}" if t.margin == 0 else f"{t.answer:.3f} / {t.clarify:.3f} / {t.margin:g}"
        results[name] = {
            "thresholds": t.as_dict(),
            "feasible_on_validation": calibration.feasible,
            "validation": calibration.metrics.as_dict(),
            "test": overall.as_dict(),
            "test_by_group": {group: m.as_dict() for group, m in groups.items()},
            "test_auc_top1_right": round(float(auc), 4),
            "test_brier": None if brier is None else round(float(brier), 4),
        }
        rows.append(
            (
                name,
                shown,
                f"{overall.precision:.3f}",
                f"{overall.recall:.3f}",
                f"{overall.f1:.3f}",
                f"{overall.wrong_rate:.2%}",
                f"{groups['in-domain OOS'].out_of_scope_handled:.1%}",
                f"{groups['general OOS'].out_of_scope_handled:.1%}",
                f"{auc:.3f}",
            )
        )

    coefficients = models["logistic regression"][-1].coef_[0]
    importance = permutation_importance(
        models["gradient-boosted trees"], x_test, y_test, scoring="roc_auc", n_repeats=5, random_state=SEED
    )
    print()
    print(
        table(
            rows,
            (
                "signal",
                "threshold",
                "precision",
                "recall",
                "F1",
                "wrong answers",
                "ID-OOS not answered",
                "OOD not answered",
                "AUC top-1 right",
            ),
        )
    )
    print()
    print(
        table(
            [
                (name, f"{coefficients[i]:+.3f}", f"{importance.importances_mean[i]:+.4f}")
                for i, name in sorted(enumerate(FEATURES), key=lambda item: -abs(coefficients[item[0]]))
            ],
            ("feature", "logistic coef (standardised)", "trees: AUC drop when permuted (test)"),
        )
    )
    seconds = time.perf_counter() - started
    print(
        f"\nfeatures: {feature_us:.0f} us a question after the scan; classifiers fitted in {fitting.seconds:.1f} s; "
        f"whole run {seconds:.0f} s"
    )
    result = {
        "knowledge_base": {
            "entries": version.entry_count,
            "phrasings": version.vector_count,
            "embedder": version.embedder,
        },
        "validation_files": {name: str(path.relative_to(DATA)) for name, path in VALID.items()},
        "test_files": {name: str(path.relative_to(DATA)) for name, path in TEST.items()},
        "questions": {
            "validation": {name: sum(q.group == name for q in valid) for name in VALID},
            "test": {name: sum(q.group == name for q in test) for name in TEST},
        },
        "top1_right": {"validation": int(y_valid.sum()), "test": int(y_test.sum())},
        "caps": {"max_wrong_rate": MAX_WRONG_RATE, "max_clarify_rate_reference": MAX_CLARIFY_RATE},
        "features": list(FEATURES),
        "classifiers": {
            "target": "1 if the question is in scope and the top-1 entry is a right one",
            "threshold_from": f"{FOLDS}-fold out-of-fold predictions on validation, then refitted on all of it",
            "logistic_regression": repr(models["logistic regression"]),
            "gradient_boosted_trees": repr(models["gradient-boosted trees"]),
        },
        "logistic_coefficients": {name: round(float(c), 4) for name, c in zip(FEATURES, coefficients, strict=True)},
        "trees_permutation_auc_drop": {
            name: round(float(v), 4) for name, v in zip(FEATURES, importance.importances_mean, strict=True)
        },
        "signals": results,
        "seconds": {
            "embed_knowledge_base": round(embedding.seconds, 1),
            "embed_questions": round(embedding_questions.seconds, 1),
            "fit": round(fitting.seconds, 1),
            "total": round(seconds, 1),
        },
        "feature_microseconds_per_question": round(feature_us, 1),
    }
    print(f"saved {save('oos-signal', result).relative_to(settings.BASE_DIR)}")


if __name__ == "__main__":
    main()

"""manage.py kb_calibrate FILE [FILE ...]: choose the decision thresholds, and fit the answer
confidence, from labelled questions."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from tqdm import tqdm

from chatbot.confidence import OUT_OF_SCOPE_FEATURE, unit_rows
from chatbot.evaluation.calibration import CAP_CONFIDENCE, thresholds_calibrate, thresholds_evaluate
from chatbot.evaluation.confidence_fit import NotEnoughQuestions, confidence_calibrate
from chatbot.evaluation.hit_testing import hit_test_rows
from chatbot.evaluation.labelled import labelled_rows_read
from chatbot.models import DecisionThresholds, OutOfScopeExamples
from kb.embedders import get_embedder
from kb.importing import ImportFileError


class Command(BaseCommand):
    help = (
        "Ask every labelled question (in-scope ones with their expected entry or category, out-of-scope ones "
        "labelled oos), pick the answer/clarify thresholds that maximise answer-vs-fallback F1 under a cap on "
        "wrong answers, fit the answer-confidence model over retrieval features and keep it when it does "
        "better out of fold, print precision, recall and F1, and save them per question language."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "files", nargs="+", type=Path, help=".csv/.json/.xlsx files, or folders with seq.in + label (BANKING77-OOS)"
        )
        parser.add_argument("--max-wrong-rate", type=float, default=0.05, help="cap on wrong answers / questions")
        parser.add_argument("--max-clarify-rate", type=float, default=0.10, help="cap on 'did you mean' replies")
        parser.add_argument(
            "--cap-confidence",
            type=float,
            default=CAP_CONFIDENCE,
            help="how sure the wrong-answer cap must hold for new questions, given how many were measured "
            "(0.5: the measured rate alone)",
        )
        parser.add_argument("--min-questions", type=int, default=30, help="fewer in a language: left unchanged")
        parser.add_argument(
            "--score-only", action="store_true", help="no confidence model: answer by the best score (removes one)"
        )
        parser.add_argument(
            "--without-examples",
            action="store_true",
            help="the confidence reads retrieval features only, not nearness to the labelled out-of-scope questions",
        )
        parser.add_argument("--dry-run", action="store_true", help="print the result, change nothing")

    def handle(
        self,
        *args,
        files,
        max_wrong_rate,
        max_clarify_rate,
        min_questions,
        score_only,
        without_examples,
        cap_confidence,
        dry_run,
        **options,
    ):
        if not 0.5 <= cap_confidence < 1:
            raise CommandError(f"--cap-confidence must be at least 0.5 and below 1, not {cap_confidence}")
        rows = []
        for path in files:
            try:
                rows.extend(labelled_rows_read(path))
            except (OSError, ValueError, ImportFileError) as exc:
                raise CommandError(f"{path}: {exc}") from exc
        with tqdm(total=len(rows), desc="asking", unit="q", disable=options["verbosity"] < 1) as bar:
            report = hit_test_rows(rows, progress=bar.update, llm_available=False, features=not score_only)
        for error in report.errors[:20]:
            self.stderr.write(error)
        if len(report.errors) > 20:
            self.stderr.write(f"... and {len(report.errors) - 20} more rows skipped")
        by_language = defaultdict(list)
        for case in report.cases:
            by_language[case.answer.language].append(case)
        if not by_language:
            raise CommandError("no labelled question could be asked")
        settings = {
            "files": files,
            "max_wrong_rate": max_wrong_rate,
            "max_clarify_rate": max_clarify_rate,
            "score_only": score_only,
            "without_examples": without_examples,
            "cap_confidence": cap_confidence,
            "dry_run": dry_run,
        }
        for language, cases in sorted(by_language.items()):
            self._calibrate(language, cases, min_questions=min_questions, **settings)

    def _calibrate(
        self,
        language,
        cases,
        *,
        files,
        max_wrong_rate,
        max_clarify_rate,
        min_questions,
        score_only,
        without_examples,
        cap_confidence,
        dry_run,
    ):
        questions = [case.scored() for case in cases]
        in_scope = sum(q.in_scope for q in questions)
        self.stdout.write(
            f"\n[{language}] {len(questions)} questions ({in_scope} in scope, {len(questions) - in_scope} out)"
        )
        if len(questions) < min_questions or in_scope == 0:
            self.stdout.write(f"  too few to calibrate (need {min_questions}, some in scope): thresholds unchanged")
            return
        # The language's own row (not English's, which live chat would borrow): it is the one saved.
        row = DecisionThresholds.objects.filter(language=language).first() or DecisionThresholds(language=language)
        current = row.as_thresholds()
        result = thresholds_calibrate(
            questions,
            language=language,
            max_wrong_rate=max_wrong_rate,
            max_clarify_rate=max_clarify_rate,
            max_suggestions=row.max_suggestions,
            cap_confidence=cap_confidence,
        )
        before = thresholds_evaluate(questions, current)
        chosen, metrics = result.thresholds, result.metrics
        self.stdout.write(
            f"  by score: answer >= {chosen.answer:.3f}, clarify >= {chosen.clarify:.3f} within {chosen.margin:g} "
            f"({result.candidates} candidates tried)"
        )
        if not result.feasible:
            self.stdout.write(
                self.style.WARNING(
                    f"  no thresholds keep wrong answers under {max_wrong_rate:.1%} (with {cap_confidence:.0%} "
                    "confidence): the safest shown"
                )
            )
        lines = [("by score", metrics)]
        confidence, confidence_note = None, {"adopted": False, "reason": "--score-only"}
        if not score_only:
            confidence, confidence_note = self._confidence(
                cases,
                questions,
                result,
                examples=not without_examples,
                max_wrong_rate=max_wrong_rate,
                max_clarify_rate=max_clarify_rate,
                cap_confidence=cap_confidence,
            )
            if confidence is not None:
                lines.append(("confidence", confidence.metrics))
        lines.append(("current", before))
        for name, m in lines:
            self.stdout.write(
                f"  {name:10} precision {m.precision:.3f}  recall {m.recall:.3f}  F1 {m.f1:.3f}  "
                f"wrong answers {m.wrong_rate:.2%} ({m.wrong_answers})  did-you-mean {m.clarify_rate:.1%} "
                f"({m.helpful_clarifications} helpful)  out-of-scope not answered {m.out_of_scope_handled:.1%}"
            )
        if current.uses_confidence and OUT_OF_SCOPE_FEATURE in current.confidence_model.features:
            self.stdout.write(
                "  (current: in sample where these questions are among its out-of-scope examples, each then "
                "nearest to itself)"
            )
        adopted = confidence is not None and confidence_note["adopted"]
        self.stdout.write(
            f"  uses: {'the answer confidence' if adopted else 'the best score'} ({confidence_note['reason']})"
        )
        if dry_run:
            self.stdout.write("  dry run: nothing saved")
            return
        final, final_metrics, feasible = (
            (confidence.thresholds, confidence.metrics, confidence.feasible)
            if adopted
            else (chosen, metrics, result.feasible)
        )
        row.answer_threshold, row.clarify_threshold, row.clarify_margin = final.answer, final.clarify, final.margin
        row.answer_confidence = final.confidence if adopted else None
        model = final.confidence_model if adopted else None
        if model is not None and confidence.examples:
            model = replace(model, examples=self._examples_store(language, cases, confidence.examples).pk)
        row.confidence_model = model.as_json() if model is not None else {}
        row.calibration = {
            "at": timezone.now().isoformat(),
            "files": [str(path) for path in files],
            "questions": len(questions),
            "max_wrong_rate": max_wrong_rate,
            "max_clarify_rate": max_clarify_rate,
            "cap_confidence": cap_confidence,
            "feasible": feasible,
            "metrics": final_metrics.as_dict(),
            "score_thresholds": {"answer": chosen.answer, "clarify": chosen.clarify, "margin": chosen.margin},
            "score_metrics": metrics.as_dict(),
            "confidence": confidence_note,
        }
        row.full_clean()
        row.save()
        self.stdout.write(self.style.SUCCESS(f"  saved the {language} thresholds"))

    def _confidence(self, cases, questions, by_score, *, examples, max_wrong_rate, max_clarify_rate, cap_confidence):
        """The fitted confidence (None if it could not be fitted) and a note on whether it is used;
        ``examples``: let it read nearness to the labelled out-of-scope questions."""
        self._vectors = _vectors_of(cases) if examples else None
        try:
            fitted = confidence_calibrate(
                questions,
                score_thresholds=by_score.thresholds,
                embedder=get_embedder().name,
                vectors=self._vectors,
                max_wrong_rate=max_wrong_rate,
                max_clarify_rate=max_clarify_rate,
                cap_confidence=cap_confidence,
            )
        except NotEnoughQuestions as exc:
            return None, {"adopted": False, "reason": f"no confidence model: {exc}"}
        t = fitted.thresholds
        self.stdout.write(
            f"  confidence: answer when P(right) >= {t.confidence:.3f}, clarify >= {t.clarify:.3f} within "
            f"{t.margin:g}; fitted on {fitted.questions} questions, ROC AUC {fitted.auc:.3f} "
            f"(best score alone {fitted.cosine_auc:.3f}); metrics out of fold"
        )
        better = fitted.metrics.f1 > by_score.metrics.f1
        if not fitted.feasible:
            reason = (
                f"the confidence cannot keep wrong answers under {max_wrong_rate:.1%} "
                f"(with {cap_confidence:.0%} confidence)"
            )
        elif not better and by_score.feasible:
            reason = f"its F1 {fitted.metrics.f1:.3f} out of fold is not above the score's {by_score.metrics.f1:.3f}"
        else:
            reason = f"F1 {fitted.metrics.f1:.3f} out of fold against the score's {by_score.metrics.f1:.3f}"
        if fitted.examples:
            self.stdout.write(
                f"  it reads nearness to {len(fitted.examples)} labelled out-of-scope questions: F1 "
                f"{fitted.metrics.f1:.3f} out of fold against {fitted.without_examples.f1:.3f} without"
            )
        note = {
            "adopted": fitted.feasible and (better or not by_score.feasible),
            "reason": reason,
            "questions": fitted.questions,
            "auc": round(fitted.auc, 4),
            "score_auc": round(fitted.cosine_auc, 4),
            "metrics": fitted.metrics.as_dict(),
            "out_of_scope_examples": len(fitted.examples),
        }
        if fitted.without_examples is not None:
            note["metrics_without_examples"] = fitted.without_examples.as_dict()
        return fitted, note

    def _examples_store(self, language, cases, examples) -> OutOfScopeExamples:
        """Store the out-of-scope questions the model measures nearness to, with their vectors.
        Examples no confidence model names any more are deleted (older than an hour: a web process
        may still read the previous thresholds for a few seconds)."""
        vectors = np.ascontiguousarray(unit_rows(self._vectors[list(examples)]))
        stored = OutOfScopeExamples.objects.create(
            language=language,
            embedder=get_embedder().name,
            questions=[cases[number].question for number in examples],
            dimensions=vectors.shape[1],
            vectors=vectors.tobytes(),
        )
        models = DecisionThresholds.objects.values_list("confidence_model", flat=True)
        named = {(model or {}).get("examples") for model in models}
        OutOfScopeExamples.objects.exclude(pk__in=[pk for pk in named | {stored.pk} if pk is not None]).filter(
            created_at__lt=timezone.now() - timedelta(hours=1)
        ).delete()
        return stored


def _vectors_of(cases) -> np.ndarray | None:
    """The labelled questions' vectors as hit testing embedded them (one row each; zeros for a
    question that had no features, e.g. one the embedder cannot read), None if none had one."""
    vectors = [case.answer.vector for case in cases]
    known = next((vector for vector in vectors if vector is not None), None)
    if known is None:
        return None
    zeros = np.zeros_like(known, dtype=np.float32)
    return np.vstack([zeros if vector is None else vector for vector in vectors]).astype(np.float32)

"""manage.py kb_calibrate FILE [FILE ...]: choose the decision thresholds from labelled questions."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from tqdm import tqdm

from chatbot.evaluation.calibration import thresholds_calibrate, thresholds_evaluate
from chatbot.evaluation.hit_testing import hit_test_rows
from chatbot.evaluation.labelled import labelled_rows_read
from chatbot.models import DecisionThresholds
from kb.importing import ImportFileError


class Command(BaseCommand):
    help = (
        "Ask every labelled question (in-scope ones with their expected entry or category, out-of-scope ones "
        "labelled oos), pick the answer/clarify thresholds that maximise answer-vs-fallback F1 under a cap on "
        "wrong answers, print precision, recall and F1 there, and save them per question language."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "files", nargs="+", type=Path, help=".csv/.json/.xlsx files, or folders with seq.in + label (BANKING77-OOS)"
        )
        parser.add_argument("--max-wrong-rate", type=float, default=0.05, help="cap on wrong answers / questions")
        parser.add_argument("--max-clarify-rate", type=float, default=0.10, help="cap on 'did you mean' replies")
        parser.add_argument("--min-questions", type=int, default=30, help="fewer in a language: left unchanged")
        parser.add_argument("--dry-run", action="store_true", help="print the result, change nothing")

    def handle(self, *args, files, max_wrong_rate, max_clarify_rate, min_questions, dry_run, **options):
        rows = []
        for path in files:
            try:
                rows.extend(labelled_rows_read(path))
            except (OSError, ValueError, ImportFileError) as exc:
                raise CommandError(f"{path}: {exc}") from exc
        with tqdm(total=len(rows), desc="asking", unit="q", disable=options["verbosity"] < 1) as bar:
            report = hit_test_rows(rows, progress=bar.update, llm_available=False)
        for error in report.errors[:20]:
            self.stderr.write(error)
        if len(report.errors) > 20:
            self.stderr.write(f"... and {len(report.errors) - 20} more rows skipped")
        by_language = defaultdict(list)
        for case in report.cases:
            by_language[case.answer.language].append(case.scored())
        if not by_language:
            raise CommandError("no labelled question could be asked")
        for language, questions in sorted(by_language.items()):
            self._calibrate(language, questions, files, max_wrong_rate, max_clarify_rate, min_questions, dry_run)

    def _calibrate(self, language, questions, files, max_wrong_rate, max_clarify_rate, min_questions, dry_run):
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
        )
        before = thresholds_evaluate(questions, current)
        chosen, metrics = result.thresholds, result.metrics
        self.stdout.write(
            f"  chosen: answer >= {chosen.answer:.3f}, clarify >= {chosen.clarify:.3f} within {chosen.margin:g} "
            f"({result.candidates} candidates tried)"
        )
        if not result.feasible:
            self.stdout.write(
                self.style.WARNING(f"  no thresholds keep wrong answers under {max_wrong_rate:.1%}: the safest shown")
            )
        for name, m in (("chosen", metrics), ("current", before)):
            self.stdout.write(
                f"  {name:8} precision {m.precision:.3f}  recall {m.recall:.3f}  F1 {m.f1:.3f}  "
                f"wrong answers {m.wrong_rate:.2%} ({m.wrong_answers})  did-you-mean {m.clarify_rate:.1%} "
                f"({m.helpful_clarifications} helpful)  out-of-scope not answered {m.out_of_scope_handled:.1%}"
            )
        if dry_run:
            self.stdout.write("  dry run: nothing saved")
            return
        row.answer_threshold, row.clarify_threshold, row.clarify_margin = chosen.answer, chosen.clarify, chosen.margin
        row.calibration = {
            "at": timezone.now().isoformat(),
            "files": [str(path) for path in files],
            "questions": len(questions),
            "max_wrong_rate": max_wrong_rate,
            "max_clarify_rate": max_clarify_rate,
            "feasible": result.feasible,
            "metrics": metrics.as_dict(),
        }
        row.full_clean()
        row.save()
        self.stdout.write(self.style.SUCCESS(f"  saved the {language} thresholds"))

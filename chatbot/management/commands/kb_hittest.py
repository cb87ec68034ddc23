"""manage.py kb_hittest FILE: batch hit testing of labelled questions against the live pipeline."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from chatbot.evaluation.hit_testing import failures_csv as failures_as_csv
from chatbot.evaluation.hit_testing import hit_test_rows
from chatbot.evaluation.labelled import read_labelled_rows
from kb.importing import ImportFileError


class Command(BaseCommand):
    help = (
        "Ask every question of a .csv/.json file (columns question or text, and expected = entry id or "
        "question, or category) and report top-1 accuracy and each miss."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
        parser.add_argument("--max-misses", type=int, default=50, help="misses to list (default 50)")
        parser.add_argument(
            "--failures-csv",
            type=Path,
            default=None,
            help="write every question not answered right (wrong answer, did you mean, fallback) to this CSV",
        )

    def handle(self, *args, file: Path, limit, max_misses, failures_csv, **options):
        try:
            rows = read_labelled_rows(file.name, file.read_bytes())
        except (OSError, ImportFileError) as exc:
            raise CommandError(str(exc)) from exc
        rows = rows[:limit] if limit else rows
        with tqdm(total=len(rows), desc="hit test", unit="q", disable=options["verbosity"] < 1) as bar:
            report = hit_test_rows(rows, progress=bar.update)
        for error in report.errors:
            self.stderr.write(error)
        if not report.cases:
            raise CommandError("no question could be tested")
        misses = report.misses
        self.stdout.write(f"questions: {report.total}")
        self.stdout.write(f"top-1 accuracy: {report.top1_accuracy:.1%} of {len(report.in_scope)} in-scope questions")
        self.stdout.write(f"answered from the right entry: {report.answer_accuracy:.1%}")
        split = ", ".join(f"{len(cases)} {kind}" for kind, cases in report.failures.items())
        self.stdout.write(f"not answered right: {report.failure_count} ({split})")
        if failures_csv is not None:
            failures_csv.write_text(failures_as_csv(report), encoding="utf-8")
            self.stdout.write(f"failures written to {failures_csv}")
        self.stdout.write(f"misses: {len(misses)}" + (f" (first {max_misses})" if len(misses) > max_misses else ""))
        for case in misses[:max_misses]:
            retrieved = ", ".join(
                f"#{hit.entry_id} {hit.question[:40]!r} {hit.score:.2f}" for hit in case.answer.hits[:3]
            )
            self.stdout.write(f"  - {case.question!r}: expected {case.expected!r}; retrieved {retrieved or 'nothing'}")

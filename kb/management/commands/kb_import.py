"""manage.py kb_import FILE: load FAQ entries from CSV, JSON or XLSX, all or nothing (within the
KB_IMPORT_* limits, as uploads are)."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from kb.importing import ImportFileError, entries_import, read_rows


class Command(BaseCommand):
    help = "Import FAQ entries from a .csv, .json or .xlsx file (rows matching an existing question update it)."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument(
            "--publish",
            action="store_true",
            help="publish every entry, also those a phrasing file gives no answer (placeholders, unpublished "
            "by default): for benchmarks and evaluation, never for customers",
        )

    def handle(self, *args, file: Path, publish: bool, **options):
        try:
            rows = read_rows(file)
        except ImportFileError as exc:
            raise CommandError(str(exc)) from exc
        if publish:
            for row in rows:
                row["published"] = True
        with tqdm(total=len(rows), desc="import", unit="row", disable=options["verbosity"] < 1) as bar:
            result = entries_import(rows=rows, progress=bar.update)
        if not result.ok:
            for error in result.errors:
                self.stderr.write(error)
            if result.errors_more:
                self.stderr.write(f"... and {result.errors_more} more")
            raise CommandError(f"{result.error_count} row(s) have errors; nothing was saved")
        self.stdout.write(
            self.style.SUCCESS(f"imported {file.name}: {result.created} created, {result.updated} updated")
        )

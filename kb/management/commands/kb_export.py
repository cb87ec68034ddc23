"""manage.py kb_export FILE: write every entry to .csv, .json or .xlsx (re-importable)."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from kb.exporting import FORMATS, export_rows, render
from kb.models import Entry


class Command(BaseCommand):
    help = "Export all FAQ entries with their phrasings to a .csv, .json or .xlsx file."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)

    def handle(self, *args, file: Path, **options):
        fmt = file.suffix.lower().lstrip(".")
        if fmt not in FORMATS:
            raise CommandError(f"unsupported file type {file.suffix!r}: use .csv, .json or .xlsx")
        with tqdm(total=Entry.objects.count(), desc="export", unit="entry", disable=options["verbosity"] < 1) as bar:
            rows = export_rows(progress=bar.update)
        try:
            file.write_bytes(render(rows, fmt))
        except OSError as exc:
            raise CommandError(f"cannot write {file}: {exc.strerror}") from exc
        self.stdout.write(self.style.SUCCESS(f"exported {len(rows)} entries to {file}"))

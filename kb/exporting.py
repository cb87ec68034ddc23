"""Writing entries out in the entry layout that kb.importing reads back (CSV, JSON, XLSX)."""

from __future__ import annotations

import csv
import io
import json

from django.db.models import Prefetch, QuerySet

from kb.models import TRANSLATION_COLUMNS, Entry, Variant

COLUMNS = ["question", "answer", "category", "language", "published", "variants", *TRANSLATION_COLUMNS]
FORMATS = {
    "csv": "text/csv",
    "json": "application/json",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


def export_rows(entries: QuerySet[Entry] | None = None, progress=None) -> list[dict]:
    """One dict per entry; variants are the alternate phrasings (the question is not repeated)."""
    entries = (
        (entries if entries is not None else Entry.objects.all())
        .order_by("id")
        .prefetch_related(
            Prefetch("variants", queryset=Variant.objects.filter(is_primary=False).order_by("id"), to_attr="alternates")
        )
    )
    rows = []
    for entry in entries:
        rows.append(
            {
                "question": entry.question,
                "answer": entry.answer,
                "category": entry.category,
                "language": entry.language,
                "published": entry.is_published,
                "variants": [variant.text for variant in entry.alternates],
                **{column: entry.translations.get(code, "") for column, code in TRANSLATION_COLUMNS.items()},
            }
        )
        if progress is not None:
            progress(1)
    return rows


# A cell starting with one of these is a formula to a spreadsheet program (CSV injection): an
# entry question "=HYPERLINK(...)" would run when an editor opens the export.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell_safe(value):
    """``value`` for a CSV cell: text a spreadsheet would read as a formula gets a leading
    apostrophe, the quote prefix spreadsheets show as text (kb.importing strips it again)."""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def render(rows: list[dict], fmt: str) -> bytes:
    """Serialise rows as ``fmt`` (csv, json or xlsx)."""
    if fmt == "json":
        return json.dumps(rows, ensure_ascii=False, indent=2).encode("utf-8")
    flat = [
        {**row, "published": "true" if row["published"] else "false", "variants": "|".join(row["variants"])}
        for row in rows
    ]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({key: csv_cell_safe(value) for key, value in row.items()} for row in flat)
        # A byte-order mark lets spreadsheet programs open Chinese text as UTF-8.
        return ("\ufeff" + buffer.getvalue()).encode("utf-8")
    if fmt == "xlsx":
        from openpyxl import Workbook
        from openpyxl.cell import WriteOnlyCell

        workbook = Workbook(write_only=True)
        sheet = workbook.create_sheet("entries")
        sheet.append(COLUMNS)
        for row in flat:
            cells = []
            for column in COLUMNS:
                cell = WriteOnlyCell(sheet, value=row[column])
                if isinstance(row[column], str):
                    # openpyxl stores a string starting with "=" as a formula: a text cell, always.
                    cell.data_type = "s"
                cells.append(cell)
            sheet.append(cells)
        buffer = io.BytesIO()
        workbook.save(buffer)
        return buffer.getvalue()
    raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")

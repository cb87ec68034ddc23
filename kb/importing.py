"""Reading FAQ files (CSV, JSON, XLSX) into entries: all rows are checked, then saved together.

Entry layout (CSV/XLSX columns, JSON keys): question, answer, category, language, published,
variants (alternate phrasings separated by "|" or new lines; a list in JSON).

Phrasing layout (e.g. BANKING77's train.csv): columns text and category, one customer phrasing a
row; each category becomes one entry whose question is its first phrasing and whose other
phrasings become variants. Optional columns answer (first non-empty one wins; default
"(intent: <category>)") and language.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction

from kb import services
from kb.exporting import FORMULA_TRIGGERS
from kb.models import Entry
from kb.text import text_key, text_normalise

REQUIRED_COLUMNS = ("question", "answer")
KNOWN_COLUMNS = {"question", "answer", "category", "language", "published", "variants"}
TRUE_WORDS = {"1", "true", "yes", "y", "published"}
FALSE_WORDS = {"0", "false", "no", "n", "draft", "unpublished", ""}


class ImportFileError(ValueError):
    """The file as a whole cannot be read (format, encoding, columns)."""


@dataclass
class ImportResult:
    """What an import did, or would have done, and every row's problem."""

    created: int = 0
    updated: int = 0
    errors: list[str] = field(default_factory=list)
    # (row number, "create" | "update", question, phrasing count) for a preview
    plan: list[tuple[int, str, str, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def read_rows(path: Path) -> list[dict]:
    """Rows of a .csv or .json file as dicts; raises ImportFileError for an unreadable file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror}") from exc
    return read_rows_from_bytes(path.name, raw)


def read_rows_from_bytes(name: str, raw: bytes) -> list[dict]:
    """Entry rows of an uploaded file, its format told by the file name's suffix."""
    header, rows = read_table(name, raw)
    if header is not None:
        rows = _check_columns(Path(name).name, header, rows)
    return _rows_in_phrasing_layout(rows)


def read_table(name: str, raw: bytes) -> tuple[list[str] | None, list[dict]]:
    """The header (None for JSON) and rows of a .csv, .json or .xlsx file, keys lower-cased."""
    path = Path(name)
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        return _read_xlsx(path.name, raw)
    if suffix not in {".csv", ".json"}:
        raise ImportFileError(f"unsupported file type {suffix!r}: use .csv, .json or .xlsx")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"{path.name} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    if suffix == ".json":
        try:
            data = json.loads(text)
        except RecursionError as exc:  # "[[[[..." deeper than the parser's stack: was a 500
            raise ImportFileError(f"{path.name} is nested too deeply to be an import file") from exc
        except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
            raise ImportFileError(f"{path.name} is not valid JSON: {exc}") from exc
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise ImportFileError(f"{path.name} must hold a JSON list of objects")
        return None, data
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = [
            {(key or "").strip().lower(): _csv_cell_read(value) for key, value in row.items() if key is not None}
            for row in reader
        ]
    except csv.Error as exc:
        raise ImportFileError(f"{path.name} is not valid CSV: {exc}") from exc
    return [str(column).strip().lower() for column in reader.fieldnames or []], rows


# Imports have a handful of columns and BANKING77 (10,003 rows) is the largest set we know.
XLSX_MAX_COLUMNS = 50
XLSX_MAX_ROWS = 200_000


def _csv_cell_read(value):
    # Undo kb.exporting.csv_cell_safe: "'=SUM(...)" was exported for the text "=SUM(...)".
    if isinstance(value, str) and value.startswith("'") and value[1:].startswith(FORMULA_TRIGGERS):
        return value[1:]
    return value


def _read_xlsx(name: str, raw: bytes) -> tuple[list[str], list[dict]]:
    from openpyxl import load_workbook

    try:
        sheet = load_workbook(io.BytesIO(raw), read_only=True, data_only=True).worksheets[0]
        cells = []
        # Bounded while reading, not after: a small file can declare millions of rows, or one cell
        # in column XFD that pads every row to 16,384 cells (issue 10: +220 MB from 18 KB).
        for row in sheet.iter_rows(max_col=XLSX_MAX_COLUMNS, values_only=True):
            if len(cells) > XLSX_MAX_ROWS:
                raise ImportFileError(f"{name} has more than {XLSX_MAX_ROWS:,} rows")
            cells.append(["" if value is None else value for value in row])
    except ImportFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many types for a broken file
        raise ImportFileError(f"{name} is not a readable .xlsx workbook: {exc}") from exc
    if not cells:
        raise ImportFileError(f"{name} is empty")
    header = [str(value).strip().lower() for value in cells[0]]
    rows = [
        {
            key: (value if isinstance(value, bool) else str(value))
            for key, value in zip(header, row, strict=False)
            if key
        }
        for row in cells[1:]
        if any(str(value).strip() for value in row)
    ]
    return header, rows


def _check_columns(name: str, header: list[str], rows: list[dict]) -> list[dict]:
    columns = {str(column).strip().lower() for column in header}
    if {"text", "category"} <= columns and "question" not in columns:
        return rows  # phrasing layout
    missing = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing:
        raise ImportFileError(
            f"{name} lacks column(s): {', '.join(missing)} (or use the phrasing layout: text, category)"
        )
    return rows


def _rows_in_phrasing_layout(rows: list[dict]) -> list[dict]:
    """Group phrasing-per-row files into one entry row per category; others pass through."""
    if not rows or "question" in rows[0] or not {"text", "category"} <= set(rows[0]):
        return rows
    grouped: dict[str, dict] = {}
    for row in rows:
        category = str(row.get("category") or "").strip()
        text = text_normalise(str(row.get("text") or ""))
        entry = grouped.setdefault(
            category,
            {
                "question": text,
                "answer": "",
                "category": category,
                "language": row.get("language") or "en",
                "variants": [],
            },
        )
        if text and text != entry["question"] and text not in entry["variants"]:
            entry["variants"].append(text)
        if not entry["answer"] and str(row.get("answer") or "").strip():
            entry["answer"] = str(row["answer"]).strip()
    for category, entry in grouped.items():
        entry["answer"] = entry["answer"] or f"(intent: {category})"
    return list(grouped.values())


def _parse_row(row: dict) -> dict:
    unknown = set(row) - KNOWN_COLUMNS
    if unknown:
        raise services.EntryInvalid(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    values = {key: row.get(key) for key in KNOWN_COLUMNS}
    for key in ("question", "answer", "category", "language"):
        if values[key] is not None and not isinstance(values[key], str):
            raise services.EntryInvalid(f"{key} must be text")
    variants = values["variants"] or []
    if isinstance(variants, str):
        variants = [part for part in variants.replace("\n", "|").split("|")]
    if not isinstance(variants, list) or not all(isinstance(v, str) for v in variants):
        raise services.EntryInvalid("variants must be a list of texts")
    published = values["published"]
    if published is None:
        published = True
    elif isinstance(published, str):
        word = published.strip().lower()
        if word not in TRUE_WORDS | FALSE_WORDS:
            raise services.EntryInvalid(f"published must be true or false, not {published!r}")
        published = word in TRUE_WORDS
    elif not isinstance(published, bool):
        raise services.EntryInvalid("published must be true or false")
    return {
        "question": values["question"] or "",
        "answer": values["answer"] or "",
        "category": values["category"] or "",
        "language": (values["language"] or "en").strip().lower(),
        "is_published": published,
        "variants": [v for v in variants if v.strip()],
    }


def entries_import(*, rows: list[dict], dry_run: bool = False, progress=None) -> ImportResult:
    """Create or update (matched by question) one entry per row, all or nothing.

    Every row is saved inside one transaction; if any row fails, everything is rolled back and
    the result lists each failing row (numbered from 1, as in a spreadsheet after its header).
    With ``dry_run`` the same checks run and the plan is reported, then everything is rolled back.
    """
    result = ImportResult()
    seen: dict[str, int] = {}
    with transaction.atomic():
        for number, row in enumerate(rows, start=1):
            try:
                fields = _parse_row(row)
                key = text_key(fields["question"])
                if key in seen:
                    raise services.EntryInvalid(f"same question as row {seen[key]}")
                seen[key] = number
                with transaction.atomic():
                    existing = Entry.objects.filter(question=text_normalise(fields["question"])).first()
                    if existing is None:
                        services.entry_create(**fields)
                        result.created += 1
                    else:
                        services.entry_update(entry=existing, **fields)
                        result.updated += 1
                    action = "create" if existing is None else "update"
                    result.plan.append((number, action, fields["question"], 1 + len(fields["variants"])))
            except services.EntryInvalid as exc:
                result.errors.append(f"row {number}: {exc}")
            if progress is not None:
                progress(1)
        if result.errors or dry_run:
            transaction.set_rollback(True)
        if result.errors:
            result.created = result.updated = 0
    return result

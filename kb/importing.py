"""Reading FAQ files (CSV, JSON) into entries: all rows are checked first, then saved together.

CSV columns: question, answer, category, language, published, variants (alternate phrasings
separated by "|" or new lines). JSON: a list of objects with the same keys ("variants" a list).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction

from kb import services
from kb.models import Entry

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
    """Rows of an uploaded file, its format told by the file name's suffix."""
    path = Path(name)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"{path.name} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ImportFileError(f"{path.name} is not valid JSON: {exc}") from exc
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise ImportFileError(f"{path.name} must hold a JSON list of objects")
        return data
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        columns = {name.strip().lower() for name in reader.fieldnames or []}
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise ImportFileError(f"{path.name} lacks column(s): {', '.join(missing)}")
        return [{(key or "").strip().lower(): value for key, value in row.items()} for row in reader]
    raise ImportFileError(f"unsupported file type {suffix!r}: use .csv or .json")


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


def entries_import(*, rows: list[dict], progress=None) -> ImportResult:
    """Create or update (matched by question) one entry per row, all or nothing.

    Every row is saved inside one transaction; if any row fails, everything is rolled back and
    the result lists each failing row (numbered from 1, as in a spreadsheet after its header).
    """
    result = ImportResult()
    seen: dict[str, int] = {}
    with transaction.atomic():
        for number, row in enumerate(rows, start=1):
            try:
                fields = _parse_row(row)
                key = " ".join(fields["question"].split()).casefold()
                if key in seen:
                    raise services.EntryInvalid(f"same question as row {seen[key]}")
                seen[key] = number
                with transaction.atomic():
                    existing = Entry.objects.filter(question=" ".join(fields["question"].split())).first()
                    if existing is None:
                        services.entry_create(**fields)
                        result.created += 1
                    else:
                        services.entry_update(entry=existing, **fields)
                        result.updated += 1
            except services.EntryInvalid as exc:
                result.errors.append(f"row {number}: {exc}")
            if progress is not None:
                progress(1)
        if result.errors:
            transaction.set_rollback(True)
            result.created = result.updated = 0
    return result

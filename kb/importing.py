"""Importing FAQ files (CSV, JSON, XLSX) as entries: all rows are checked, then saved together.
The files are read within limits by kb.import_files; large ones are imported by a background job
(kb.import_jobs), row by row.

Entry layout (CSV/XLSX columns, JSON keys): question, answer, category, language, published,
variants (alternate phrasings separated by "|" or new lines; a list in JSON).

Phrasing layout (e.g. BANKING77's train.csv): columns text and category, one customer phrasing a
row; each category becomes one entry whose question is its first phrasing and whose other
phrasings become variants. Optional columns answer (first non-empty one wins) and language; an
entry without an answer gets the placeholder "(intent: <category>)" and is imported unpublished.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from django.db import transaction

from kb import services
from kb.import_files import ImportFileError, ImportLimits, file_check, size_check, table_read
from kb.models import TRANSLATION_COLUMNS, Entry
from kb.text import text_key, text_normalise

REQUIRED_COLUMNS = ("question", "answer")
PLACEHOLDER_ANSWER = "(intent: {category})"
"""The answer of an entry made from a phrasing file without answers; such entries are unpublished."""
KNOWN_COLUMNS = {"question", "answer", "category", "language", "published", "variants", *TRANSLATION_COLUMNS}
TRUE_WORDS = {"1", "true", "yes", "y", "published"}
FALSE_WORDS = {"0", "false", "no", "n", "draft", "unpublished", ""}
# Row errors kept and shown (admin, API, a job's record); the rest are only counted, so a file of
# 200,000 bad rows gets a small, fast answer (issue 10: a 113 MB response).
MAX_ERRORS_SHOWN = 100
# A message quotes what the file holds (an unknown column's name); a cell may be 20,000 characters.
MAX_ERROR_CHARS = 300


# Answers that stand for one still to be written: a customer must never receive them.
_PLACEHOLDER = re.compile(
    r"^\s*(\(intent: .*\)|todo|tbd|tba|fixme|xxx+|n/?a|none|null|-+|\?+|\.+|…|lorem ipsum.*|"
    r"answer( here| goes here)?|placeholder|待定|待补充|暂无|无)\s*[.!]?\s*$",
    re.IGNORECASE | re.DOTALL,
)


def answer_warning(*, question: str, answer: str) -> str:
    """Why an imported answer looks like no answer (empty, a placeholder, the question again), or
    "" for one that reads like an answer."""
    text = answer.strip()
    if not text:
        return "empty answer"
    if _PLACEHOLDER.match(text):
        return f"placeholder answer ({text[:40]})"
    if text_key(text) == text_key(question):
        return "the answer repeats the question"
    return ""


@dataclass(frozen=True)
class PlanRow:
    """One row of an import's preview: what it would create or update, and what looks wrong."""

    number: int
    action: str  # "create" | "update"
    question: str
    answer: str
    category: str
    language: str
    published: bool
    phrasings: int  # the question and its alternate phrasings
    warning: str = ""

    @classmethod
    def of(cls, number: int, action: str, fields: dict, *, unpublished: bool = False) -> PlanRow:
        return cls(
            number=number,
            action=action,
            question=fields["question"],
            answer=fields["answer"],
            category=fields["category"],
            language=fields["language"],
            published=fields["is_published"] and not unpublished,
            phrasings=1 + len(fields["variants"]),
            warning=answer_warning(question=fields["question"], answer=fields["answer"]),
        )

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImportResult:
    """What an import did, or would have done, and its rows' problems (the first MAX_ERRORS_SHOWN)."""

    created: int = 0
    updated: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0  # every row error, shown or not
    plan: list[PlanRow] = field(default_factory=list)  # every row saved, for a preview
    entry_ids: list[int] = field(default_factory=list)  # the entries created or updated

    @property
    def warning_count(self) -> int:
        """Rows whose answer looks like no answer (PlanRow.warning)."""
        return sum(1 for row in self.plan if row.warning)

    @property
    def published_count(self) -> int:
        """Rows that would be answered to customers once embedded."""
        return sum(1 for row in self.plan if row.published)

    @property
    def ok(self) -> bool:
        return not self.error_count

    @property
    def errors_more(self) -> int:
        """Row errors beyond those listed."""
        return self.error_count - len(self.errors)

    def error(self, message: str) -> None:
        """Count a row's error, and keep its message while fewer than MAX_ERRORS_SHOWN are kept."""
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_SHOWN:
            self.errors.append(message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 1] + "…")


def read_rows(path: Path) -> list[dict]:
    """Entry rows of a .csv, .json or .xlsx file; raises ImportFileError for an unreadable file."""
    try:
        size_check(path.name, path.stat().st_size)
        raw = path.read_bytes()
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror}") from exc
    return read_rows_from_bytes(path.name, raw)


def read_rows_from_bytes(name: str, raw: bytes) -> list[dict]:
    """Entry rows of an uploaded file, its format told by the file name's suffix, within the
    KB_IMPORT_* limits (ImportFileError past one)."""
    header, rows = table_read(name, raw)
    return entry_rows(name, header, rows)


def read_table(name: str, raw: bytes) -> tuple[list[str] | None, list[dict]]:
    """The header (None for JSON) and rows of a .csv, .json or .xlsx file, within the limits."""
    return table_read(name, raw)


def entry_rows(name: str, header: list[str] | None, rows: list[dict]) -> list[dict]:
    """A table's rows as entry rows: its columns checked, the phrasing layout grouped."""
    if header is not None:
        rows = _check_columns(Path(name).name, header, rows)
    return _rows_in_phrasing_layout(rows)


def upload_rows_if_small(name: str, raw: bytes) -> list[dict] | None:
    """The entry rows of an upload small enough to import inside the request (at most
    KB_IMPORT_INLINE_MAX_ROWS rows and KB_IMPORT_INLINE_MAX_BYTES to parse), or None for a file a
    background job must import. Every limit that can be checked without reading the table is
    checked first, so a file over one is refused (ImportFileError) before anything is read."""
    limits = ImportLimits.from_settings()
    facts = file_check(name, raw, limits)
    if facts.header is not None:
        _check_columns(Path(name).name, facts.header, [])
    if not facts.is_small(limits):
        return None
    header, rows = table_read(name, raw, limits)
    if len(rows) > limits.inline_max_rows:  # JSON, and an XLSX that declared no size
        return None
    return entry_rows(name, header, rows)


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
    for number, row in enumerate(rows, start=1):
        category = _phrasing_cell(row, "category", number).strip()
        text = text_normalise(_phrasing_cell(row, "text", number))
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
        answer = _phrasing_cell(row, "answer", number).strip()
        if not entry["answer"] and answer:
            entry["answer"] = answer
    for category, entry in grouped.items():
        if not entry["answer"]:
            # A placeholder is no answer for a customer: such entries come in unpublished, for an
            # editor to write their answers (kb_import --publish overrides it, e.g. for benchmarks).
            entry["answer"] = PLACEHOLDER_ANSWER.format(category=category)
            entry["published"] = False
    return list(grouped.values())


def _phrasing_cell(row: dict, key: str, number: int) -> str:
    # Rows are grouped before they are checked one by one, so a cell that is not text (a JSON
    # object, say) is the file's error here.
    value = row.get(key)
    if value is None or isinstance(value, str | bool | int | float):
        return "" if value is None else str(value)
    raise ImportFileError(f"row {number}: {key} must be text")


def _parse_row(row: dict) -> dict:
    unknown = set(row) - KNOWN_COLUMNS
    if unknown:
        raise services.EntryInvalid(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    values = {key: row.get(key) for key in KNOWN_COLUMNS}
    for key in ("question", "answer", "category", "language", *TRANSLATION_COLUMNS):
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
    fields = {
        "question": values["question"] or "",
        "answer": values["answer"] or "",
        "category": values["category"] or "",
        "language": (values["language"] or "en").strip().lower(),
        "is_published": published,
        "variants": [v for v in variants if v.strip()],
    }
    # Only a file with answer_<language> columns sets the answers per language (an empty cell
    # removes one): a file without them leaves an entry's as they are.
    if any(column in row for column in TRANSLATION_COLUMNS):
        fields["translations"] = {
            code: values[column] or "" for column, code in TRANSLATION_COLUMNS.items() if column in row
        }
    return fields


def entry_rows_checked(rows: list[dict]):
    """Each row's number (from 1, as in a spreadsheet after its header) with its entry's fields,
    or with the message of the rule it breaks; a question seen in an earlier row is an error."""
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        try:
            fields = _parse_row(row)
            key = text_key(fields["question"])
            if key in seen:
                raise services.EntryInvalid(f"same question as row {seen[key]}")
            seen[key] = number
        except services.EntryInvalid as exc:
            yield number, None, str(exc)
        else:
            yield number, fields, None


def entry_save(fields: dict, *, unpublished: bool = False) -> tuple[str, int]:
    """Create the entry, or update the one with the same question: ("create" or "update", its id).
    ``unpublished`` saves it unpublished whatever the file says. In a savepoint, so a row that
    breaks a rule (services.EntryInvalid) leaves the rows around it."""
    if unpublished:
        fields = {**fields, "is_published": False}
    with transaction.atomic():
        existing = Entry.objects.filter(question=text_normalise(fields["question"])).first()
        if existing is None:
            return "create", services.entry_create(**fields).pk
        services.entry_update(entry=existing, **fields)
        return "update", existing.pk


def entries_import(
    *, rows: list[dict], dry_run: bool = False, unpublished: bool = False, progress=None
) -> ImportResult:
    """Create or update (matched by question) one entry per row, all or nothing; ``unpublished``
    imports every row unpublished (customers get nothing from it until an editor publishes it).

    Every row is saved inside one transaction; if any row fails, everything is rolled back and
    the result lists the failing rows (the first MAX_ERRORS_SHOWN, and how many there were).
    With ``dry_run`` the same checks run and the plan is reported, then everything is rolled back.
    """
    result = ImportResult()
    with transaction.atomic():
        for number, fields, error in entry_rows_checked(rows):
            try:
                if error is not None:
                    raise services.EntryInvalid(error)
                action, entry_id = entry_save(fields, unpublished=unpublished)
                if action == "create":
                    result.created += 1
                else:
                    result.updated += 1
                result.plan.append(PlanRow.of(number, action, fields, unpublished=unpublished))
                result.entry_ids.append(entry_id)
            except services.EntryInvalid as exc:
                result.error(f"row {number}: {exc}")
            if progress is not None:
                progress(1)
        if result.error_count or dry_run:
            transaction.set_rollback(True)
        if result.error_count:
            result.created = result.updated = 0
        if result.error_count or dry_run:
            result.entry_ids = []  # rolled back
    return result

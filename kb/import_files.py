"""Reading import files (CSV, JSON, XLSX) within limits checked before the table is read.

An upload is untrusted: a 464 KB XLSX can declare 3,000,000 rows, an 18 KB one hold a cell in
column XFD, and "[" * 100000 looks like JSON (issue 10). So the file's size, an XLSX's unpacked size
and its sheet's declared dimensions are checked first, without reading a row, and the rows are then
read within the row, column and cell limits. Every problem with the file as a whole is an
ImportFileError whose message is shown to whoever uploaded it. The limits are the KB_IMPORT_*
settings (see the README).

Text cells are cleaned as chat messages are (kb.text.text_sanitise): control characters, bidi
overrides, zero-width characters and lone surrogates are dropped, so no database refuses a row.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import PurePath

from django.conf import settings

from kb.exporting import FORMULA_TRIGGERS
from kb.text import text_sanitise

SUFFIXES = (".csv", ".json", ".xlsx")
UTF8_CHECK_CHUNK = 64 * 1024


class ImportFileError(ValueError):
    """The file as a whole cannot be read (format, encoding, columns, a limit)."""


@dataclass(frozen=True)
class ImportLimits:
    """What an import file may hold (the KB_IMPORT_* settings)."""

    max_bytes: int  # the file as uploaded
    max_unpacked_bytes: int  # an XLSX's parts once unzipped
    max_rows: int  # data rows, the header not counted
    max_columns: int
    max_cell_chars: int
    inline_max_rows: int  # more rows than this: a background job imports the file
    inline_max_bytes: int  # more to parse than this (an XLSX: unpacked): a job too

    @classmethod
    def from_settings(cls) -> ImportLimits:
        """The limits in force (read at each call, so a changed setting applies at once)."""
        return cls(
            max_bytes=settings.KB_IMPORT_MAX_BYTES,
            max_unpacked_bytes=settings.KB_IMPORT_MAX_UNPACKED_BYTES,
            max_rows=settings.KB_IMPORT_MAX_ROWS,
            max_columns=settings.KB_IMPORT_MAX_COLUMNS,
            max_cell_chars=settings.KB_IMPORT_MAX_CELL_CHARS,
            inline_max_rows=settings.KB_IMPORT_INLINE_MAX_ROWS,
            inline_max_bytes=settings.KB_IMPORT_INLINE_MAX_BYTES,
        )


@dataclass(frozen=True)
class FileFacts:
    """What the checks learnt about a file without reading its table."""

    rows: int | None  # data rows: a CSV's counted, an XLSX's declared; None when unknown (JSON)
    parse_bytes: int  # what reading it means parsing: the file, or an XLSX's unpacked parts
    header: list[str] | None = None  # a CSV's column names, lower-cased

    def is_small(self, limits: ImportLimits) -> bool:
        """Whether the file may be read and imported inside a web request."""
        return self.parse_bytes <= limits.inline_max_bytes and (self.rows or 0) <= limits.inline_max_rows


def file_kind(name: str) -> str:
    """ "csv", "json" or "xlsx", from the file name's suffix."""
    suffix = PurePath(name).suffix.lower()
    if suffix not in SUFFIXES:
        raise ImportFileError(f"unsupported file type {suffix!r}: use .csv, .json or .xlsx")
    return suffix[1:]


def size_check(name: str, size: int, limits: ImportLimits | None = None) -> None:
    """Refuse a file over KB_IMPORT_MAX_BYTES (an upload is checked before it is read)."""
    limits = limits or ImportLimits.from_settings()
    if size > limits.max_bytes:
        raise ImportFileError(f"{_base(name)} is {size:,} bytes; the limit is {limits.max_bytes:,} bytes")


def file_check(name: str, raw: bytes, limits: ImportLimits | None = None) -> FileFacts:
    """Every check that needs no table in memory: type, size, encoding; a CSV streamed once for its
    rows, columns and cells (one row in memory at a time); an XLSX's unpacked size and its sheet's
    declared dimensions (no row, and not its shared strings, read). Raises ImportFileError."""
    limits = limits or ImportLimits.from_settings()
    kind = file_kind(name)
    size_check(name, len(raw), limits)
    if kind == "xlsx":
        return _xlsx_check(_base(name), raw, limits)
    if kind == "csv":
        records = _csv_rows(_base(name), raw, limits, clean=False)
        header = [text_sanitise(column).strip().lower() for column in next(records, [])]
        return FileFacts(rows=sum(1 for record in records if record), parse_bytes=len(raw), header=header)
    _utf8_check(_base(name), raw)
    return FileFacts(rows=None, parse_bytes=len(raw))


def table_read(name: str, raw: bytes, limits: ImportLimits | None = None) -> tuple[list[str] | None, list[dict]]:
    """The header (None for JSON) and rows of a .csv, .json or .xlsx file, within the limits; CSV
    and XLSX keys are lower-cased. Raises ImportFileError for a file that cannot be read or breaks
    a limit."""
    limits = limits or ImportLimits.from_settings()
    kind = file_kind(name)
    size_check(name, len(raw), limits)
    base = _base(name)
    if kind == "xlsx":
        return _xlsx_read(base, raw, limits)
    if kind == "json":
        return None, _json_read(base, raw, limits)
    records = _csv_rows(base, raw, limits)
    header = [column.strip().lower() for column in next(records, [])]
    rows = [
        {key: _csv_cell_read(value) for key, value in zip(header, record, strict=False)}
        # csv.DictReader's padding: missing cells are None (extra cells are ignored).
        | {key: None for key in header[len(record) :]}
        for record in records
        if record  # a blank line, as csv.DictReader skips it
    ]
    return header, rows


def _base(name: str) -> str:
    return PurePath(name).name


def _too_many_rows(name: str, limits: ImportLimits) -> ImportFileError:
    return ImportFileError(f"{name} has more than {limits.max_rows:,} rows (KB_IMPORT_MAX_ROWS)")


def _cell_too_long(name: str, where: str, limits: ImportLimits) -> ImportFileError:
    return ImportFileError(
        f"{name}: {where} holds more than {limits.max_cell_chars:,} characters (KB_IMPORT_MAX_CELL_CHARS)"
    )


def _text(value: str, name: str, where: str, limits: ImportLimits) -> str:
    if len(value) > limits.max_cell_chars:
        raise _cell_too_long(name, where, limits)
    return text_sanitise(value)


def _utf8_check(name: str, raw: bytes) -> None:
    # Decoded a piece at a time: the check must not hold a second, larger copy of a 10 MB file.
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(raw)
    for start in range(0, len(raw), UTF8_CHECK_CHUNK):
        try:
            decoder.decode(view[start : start + UTF8_CHECK_CHUNK], final=start + UTF8_CHECK_CHUNK >= len(raw))
        except UnicodeDecodeError as exc:
            raise ImportFileError(f"{name} is not UTF-8 text (byte {start + exc.start}); save it as UTF-8") from exc


# --- CSV --------------------------------------------------------------------------------------


def _csv_rows(name: str, raw: bytes, limits: ImportLimits, *, clean: bool = True):
    """The records of a CSV file (the header first), decoded and parsed as they are read: a huge
    file is never in memory as text or rows. Raises ImportFileError at the first broken limit.
    Without ``clean`` the cells are only checked, not cleaned (a count: 5x faster)."""
    stream = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8-sig", newline="")
    try:
        for number, record in enumerate(csv.reader(stream)):  # number 0 is the header
            if number > limits.max_rows:
                raise _too_many_rows(name, limits)
            if len(record) > limits.max_columns:
                raise ImportFileError(
                    f"{name}: {_csv_where(number)} has {len(record):,} columns;"
                    f" the limit is {limits.max_columns} (KB_IMPORT_MAX_COLUMNS)"
                )
            if record and max(map(len, record)) > limits.max_cell_chars:
                raise _cell_too_long(name, f"a cell of {_csv_where(number)}", limits)
            yield [text_sanitise(cell) for cell in record] if clean else record
    except UnicodeDecodeError:
        _utf8_check(name, raw)  # reports the first bad byte of the whole file
        raise  # unreachable: the check above raises
    except csv.Error as exc:
        raise ImportFileError(f"{name} is not valid CSV: {exc}") from exc


def _csv_where(number: int) -> str:
    return "the header" if number == 0 else f"row {number}"


def _csv_cell_read(value):
    # Undo kb.exporting.csv_cell_safe: "'=SUM(...)" was exported for the text "=SUM(...)".
    if isinstance(value, str) and value.startswith("'") and value[1:].startswith(FORMULA_TRIGGERS):
        return value[1:]
    return value


# --- JSON -------------------------------------------------------------------------------------


def _json_read(name: str, raw: bytes, limits: ImportLimits) -> list[dict]:
    _utf8_check(name, raw)
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except RecursionError as exc:  # "[[[[..." deeper than the parser's stack: was a 500
        raise ImportFileError(f"{name} is nested too deeply to be an import file") from exc
    except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
        raise ImportFileError(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ImportFileError(f"{name} must hold a JSON list of objects")
    if len(data) > limits.max_rows:
        raise _too_many_rows(name, limits)
    return [_json_row(name, number, row, limits) for number, row in enumerate(data, start=1)]


def _json_row(name: str, number: int, row: dict, limits: ImportLimits) -> dict:
    if len(row) > limits.max_columns:
        raise ImportFileError(
            f"{name}: row {number} has {len(row):,} fields; the limit is {limits.max_columns} (KB_IMPORT_MAX_COLUMNS)"
        )
    cleaned = {}
    for key, value in row.items():
        where = f"row {number}"
        if isinstance(value, str):
            value = _text(value, name, f"{where}'s {key[:40]!r}", limits)
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            # A list of phrasings counts as one cell, as the "|"-separated cell of a CSV does.
            if sum(len(item) + 1 for item in value) > limits.max_cell_chars:
                raise _cell_too_long(name, f"{where}'s {key[:40]!r}", limits)
            value = [text_sanitise(item) for item in value]
        # Other values (numbers, objects, nested lists) are left for the row checks to refuse.
        cleaned[text_sanitise(key)] = value
    return cleaned


# --- XLSX -------------------------------------------------------------------------------------


def _xlsx_check(name: str, raw: bytes, limits: ImportLimits) -> FileFacts:
    """The unpacked size (a zip bomb stops here) and the first sheet's declared dimensions, read
    from the top of its XML; no row and not the shared strings are read."""
    from openpyxl.reader.excel import ExcelReader
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet._read_only import read_dimension

    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            # zipfile never inflates a member past the size its header declares, so these bound
            # what reading can unpack.
            unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > limits.max_unpacked_bytes:
            raise ImportFileError(
                f"{name} unpacks to {unpacked:,} bytes;"
                f" the limit is {limits.max_unpacked_bytes:,} (KB_IMPORT_MAX_UNPACKED_BYTES)"
            )
        # openpyxl's own steps of load_workbook up to finding the sheets, without the shared strings.
        reader = ExcelReader(io.BytesIO(raw), read_only=True, data_only=True)
        try:
            reader.read_manifest()
            reader.read_workbook()
            paths = [
                rel.target
                for _sheet, rel in reader.parser.find_sheets()
                if rel.target in reader.valid_files and "chartsheet" not in rel.Type
            ]
            if not paths:
                raise ImportFileError(f"{name} has no worksheet")
            with reader.archive.open(paths[0]) as source:
                dimensions = read_dimension(source)
        finally:
            reader.archive.close()
    except ImportFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile and openpyxl raise many types for a broken file
        raise ImportFileError(f"{name} is not a readable .xlsx workbook: {exc}") from exc
    _min_column, _min_row, max_column, max_row = dimensions or (None, None, None, None)
    # Not declared ("A:B" declares no rows): counted while they are read.
    if max_row is not None and max_row - 1 > limits.max_rows:
        raise ImportFileError(
            f"{name}'s sheet declares {max_row:,} rows;"
            f" the limit is {limits.max_rows:,} and a header (KB_IMPORT_MAX_ROWS)"
        )
    if max_column is not None and max_column > limits.max_columns:
        raise ImportFileError(
            f"{name}'s sheet declares cells up to column {get_column_letter(min(max_column, 18278))} "
            f"({max_column:,} columns); the limit is {limits.max_columns} (KB_IMPORT_MAX_COLUMNS): "
            "delete the cells beyond the table"
        )
    return FileFacts(rows=None if max_row is None else max(max_row - 1, 0), parse_bytes=unpacked)


def _xlsx_read(name: str, raw: bytes, limits: ImportLimits) -> tuple[list[str], list[dict]]:
    from openpyxl import load_workbook

    _xlsx_check(name, raw, limits)
    cells = []
    try:
        workbook = load_workbook(io.BytesIO(raw), read_only=True, data_only=True)
        try:
            sheet = workbook.worksheets[0]
            # Bounded while reading too, for a sheet without a declared size or with a false one: cells
            # past the column limit are never materialised (max_col), and max_row reads past a
            # declared size that is too small (openpyxl would silently stop there) up to the limit.
            rows = sheet.iter_rows(max_col=limits.max_columns, max_row=limits.max_rows + 2, values_only=True)
            for number, row in enumerate(rows):
                if number > limits.max_rows:
                    raise _too_many_rows(name, limits)
                where = "the header" if number == 0 else f"row {number}"
                cells.append([_xlsx_cell(value, name, where, limits) for value in row])
        finally:
            workbook.close()
    except ImportFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many types for a broken file
        raise ImportFileError(f"{name} is not a readable .xlsx workbook: {exc}") from exc
    if not cells:
        raise ImportFileError(f"{name} is empty")
    header = [str(value).strip().lower() for value in cells[0]]
    rows = [
        {key: value for key, value in zip(header, row, strict=False) if key}
        for row in cells[1:]
        if any(str(value).strip() for value in row)
    ]
    return header, rows


def _xlsx_cell(value, name: str, where: str, limits: ImportLimits):
    if value is None:
        return ""
    if isinstance(value, bool):
        return value
    return _text(str(value), name, f"a cell of {where}", limits)

"""Property-based fuzzing of the import parsers (issue 10): whatever bytes arrive as a .csv, .json
or .xlsx, reading them gives entry rows, each with its entry's fields or a row error, or raises
kb.import_files.ImportFileError with a message; never another exception (which would be a 500).
Saving what was read (a dry run, on this test's database) reports row errors, never raises."""

import csv
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kb import importing
from kb.import_files import ImportFileError
from tests.kb.crafted_imports import HEADER_ROW, xlsx_package

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_DB = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every character, lone surrogates, controls, bidi overrides and NUL included; and every character a
# file can carry as UTF-8 (all but lone surrogates).
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
encodable_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
# Words the readers give meaning to, so the examples reach past the first check.
COLUMNS = ["question", "answer", "category", "language", "published", "variants", "text", " Question ", "ANSWER"]
WORDS = ["", "true", "no", "maybe", "en", "zh", "tlh", "=SUM(A1)", "'=cmd", "a|b", "a\nb", "Where is it?"]
cell_text = st.sampled_from(WORDS) | encodable_text | any_text
column = st.sampled_from(COLUMNS) | st.text(max_size=8)
# Mostly headers the readers accept, so the examples go on to the rows.
header = st.lists(column, max_size=5).map(lambda extra: ["question", "answer", *extra]) | st.lists(column, max_size=7)


def outcome(name: str, raw: bytes) -> list[dict] | None:
    """The rows read from ``raw``, checked row by row, or None for an ImportFileError; any other
    exception fails the property."""
    try:
        # The web side's path (checks, then the table when small), and the job's (the table).
        importing.upload_rows_if_small(name, raw)
        rows = importing.read_rows_from_bytes(name, raw)
    except ImportFileError as exc:
        assert str(exc), "an ImportFileError must say what is wrong"
        return None
    assert isinstance(rows, list) and all(isinstance(row, dict) for row in rows)
    for _number, fields, error in importing.entry_rows_checked(rows):
        assert (fields is None) != (error is None)
        if fields is not None:
            assert all(isinstance(fields[key], str) for key in ("question", "answer", "category", "language"))
            assert all(isinstance(text, str) for text in fields["variants"])
    return rows


def dry_run(rows: list[dict] | None) -> None:
    if rows is not None:
        result = importing.entries_import(rows=rows, dry_run=True)
        assert result.error_count == len(result.errors) + result.errors_more


# --- CSV --------------------------------------------------------------------------------------


def csv_bytes(header: list[str], records: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(records)
    # Lone surrogates become bytes that are not UTF-8, as a broken file would hold.
    return buffer.getvalue().encode("utf-8", "surrogatepass")


csv_files = (
    st.builds(csv_bytes, header, st.lists(st.lists(st.sampled_from(WORDS) | encodable_text, max_size=8), max_size=12))
    | st.builds(csv_bytes, header, st.lists(st.lists(cell_text, max_size=8), max_size=12))
    | st.binary(max_size=400)
    | any_text.map(lambda text: text.encode("utf-8", "surrogatepass"))
)


@FUZZ
@given(csv_files)
def test_any_csv_gives_rows_or_an_import_file_error(raw):
    outcome("faq.csv", raw)


# --- JSON -------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | cell_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=20,
)
json_rows = st.fixed_dictionaries(
    {"question": cell_text, "answer": cell_text},
    optional={"category": cell_text, "language": cell_text, "published": json_scalars, "variants": json_values},
) | st.dictionaries(column, cell_text | st.lists(cell_text, max_size=4) | json_values, max_size=8)
json_documents = st.lists(json_rows, max_size=10) | json_values
json_files = (
    json_documents.map(lambda document: json.dumps(document).encode())
    | st.integers(1, 200_000).map(lambda depth: b"[" * depth)
    | st.integers(1, 200_000).map(lambda depth: b"[" * depth + b"]" * depth)
    | st.integers(1, 100_000).map(lambda digits: b"[" + b"9" * digits + b"]")
    | st.binary(max_size=400)
)


@FUZZ
@given(json_files)
def test_any_json_gives_rows_or_an_import_file_error(raw):
    outcome("faq.json", raw)


# --- XLSX -------------------------------------------------------------------------------------


def workbook_bytes(rows: list[list]) -> bytes:
    from openpyxl import Workbook
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    workbook = Workbook()
    for row in rows:
        # openpyxl refuses to write what XML cannot hold; a file can't carry it either.
        workbook.active.append(
            [
                ILLEGAL_CHARACTERS_RE.sub("", value.encode("utf-8", "ignore").decode())
                if isinstance(value, str)
                else value
                for value in row
            ]
        )
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


xlsx_cells = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False) | cell_text
xml_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=200)
dimensions = (
    st.none() | st.sampled_from(["A1", "A1:B3", "A:B", "A1:XFD1048576", "ZZZZ1", "A0:B-1", "1:2", ""]) | xml_text
)
xlsx_files = (
    st.builds(
        workbook_bytes,
        st.lists(st.lists(xlsx_cells, max_size=6), max_size=8).map(lambda rows: [["question", "answer"], *rows]),
    )
    | st.builds(workbook_bytes, st.lists(st.lists(xlsx_cells, max_size=6), max_size=8))
    # A well-formed package whose sheet holds anything, under any declared dimension.
    | st.builds(lambda body, dimension: xlsx_package([HEADER_ROW, body], dimension=dimension), xml_text, dimensions)
    | st.binary(max_size=400)
)


@FUZZ
@given(xlsx_files)
def test_any_xlsx_gives_rows_or_an_import_file_error(raw):
    outcome("faq.xlsx", raw)


@pytest.fixture(scope="module")
def small_workbook() -> bytes:
    # Made once: openpyxl stamps the time into the file, and its compressed length varies with it,
    # which would make hypothesis's examples differ between replays.
    return workbook_bytes([["question", "answer"], ["Where is my order?", "In the mail."]])


@FUZZ
@given(noise=st.binary(min_size=1, max_size=2_000), data=st.data())
def test_a_damaged_workbook_gives_rows_or_an_import_file_error(small_workbook, noise, data):
    valid = bytearray(small_workbook)
    start = data.draw(st.integers(0, len(valid) - 1))
    valid[start : start + len(noise)] = noise
    outcome("faq.xlsx", bytes(valid))


# --- saving what was read -----------------------------------------------------------------------


@pytest.mark.django_db
@FUZZ_DB
@given(st.sampled_from(["faq.csv", "faq.json", "faq.xlsx"]), st.data())
def test_saving_any_rows_read_gives_row_errors_never_an_exception(name, data):
    # NUL and lone surrogates are what PostgreSQL refuses: the readers drop them.
    strategy = {"faq.csv": csv_files, "faq.json": json_files, "faq.xlsx": xlsx_files}[name]
    dry_run(outcome(name, data.draw(strategy)))

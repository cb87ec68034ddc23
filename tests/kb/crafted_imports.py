"""The crafted import files of issue 10's table, built in memory (bench/bench_import_memory.py
measures a web process against the same files)."""

from __future__ import annotations

import functools
import io
import zipfile

MAIN_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
RELS_NS = "http://schemas.openxmlformats.org/package/2006/relationships"
DOC_RELS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
SHEETML = "application/vnd.openxmlformats-officedocument.spreadsheetml"
CONTENT_TYPES = f"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
<Default Extension="xml" ContentType="application/xml"/>
<Override PartName="/xl/workbook.xml" ContentType="{SHEETML}.sheet.main+xml"/>
<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{SHEETML}.worksheet+xml"/>
</Types>"""
PACKAGE_RELS = f"""<Relationships xmlns="{RELS_NS}"><Relationship Id="rId1"
Type="{DOC_RELS}/officeDocument" Target="xl/workbook.xml"/></Relationships>"""
WORKBOOK = f"""<workbook xmlns="{MAIN_NS}" xmlns:r="{DOC_RELS}"><sheets>
<sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>"""
WORKBOOK_RELS = f"""<Relationships xmlns="{RELS_NS}"><Relationship Id="rId1"
Type="{DOC_RELS}/worksheet" Target="worksheets/sheet1.xml"/></Relationships>"""


def xlsx_package(sheet_chunks, *, dimension: str | None) -> bytes:
    """A minimal .xlsx whose one sheet holds the rows given as XML chunks (streamed into the zip,
    so a sheet of hundreds of megabytes never sits in memory), declaring ``dimension`` if given."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", CONTENT_TYPES)
        archive.writestr("_rels/.rels", PACKAGE_RELS)
        archive.writestr("xl/workbook.xml", WORKBOOK)
        archive.writestr("xl/_rels/workbook.xml.rels", WORKBOOK_RELS)
        with archive.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as sheet:
            sheet.write(f'<worksheet xmlns="{MAIN_NS}">'.encode())
            if dimension:
                sheet.write(f'<dimension ref="{dimension}"/>'.encode())
            sheet.write(b"<sheetData>")
            for chunk in sheet_chunks:
                sheet.write(chunk.encode())
            sheet.write(b"</sheetData></worksheet>")
    return buffer.getvalue()


def _text_cell(ref: str, text: str) -> str:
    return f'<c r="{ref}" t="inlineStr"><is><t>{text}</t></is></c>'


HEADER_ROW = f'<row r="1">{_text_cell("A1", "question")}{_text_cell("B1", "answer")}</row>'


# Rows may leave out their number (r="..."): the same bytes again and again, which deflate ~1000:1.
SAME_ROW = f"<row>{_text_cell('', 'Where?')}{_text_cell('', 'Here.')}</row>".replace(' r=""', "")


def _same_rows(count: int, step: int = 50_000):
    for start in range(0, count, step):
        yield SAME_ROW * min(step, count - start)


@functools.cache
def xlsx_declaring_rows(rows: int = 3_000_000, *, written: int | None = None) -> bytes:
    """Issue 10's "464 KB XLSX declaring 3M rows": a header, then ``written`` rows (all of them by
    default: ~240 MB of sheet XML that deflates to a few hundred KB) under a declared A1:B<rows>."""
    written = rows if written is None else written
    return xlsx_package([HEADER_ROW, *_same_rows(written - 1)], dimension=f"A1:B{rows}")


@functools.cache
def xlsx_with_far_cell(rows: int = 30, *, declared: bool = True) -> bytes:
    """Issue 10's "18 KB XLSX with one cell in column XFD": a small table and one cell in the last
    column, under the dimension a spreadsheet program declares for it (A1:XFD<rows + 1>) or none."""
    body = [
        f'<row r="{n}">{_text_cell(f"A{n}", f"question {n}")}{_text_cell(f"B{n}", f"answer {n}")}'
        + (_text_cell(f"XFD{n}", "far away") if n == 3 else "")
        + "</row>"
        for n in range(2, rows + 2)
    ]
    return xlsx_package([HEADER_ROW, *body], dimension=f"A1:XFD{rows + 1}" if declared else None)


def csv_rows(rows: int) -> bytes:
    """A CSV of ``rows`` small, valid entry rows (the "huge CSV" when ``rows`` is large)."""
    lines = (f"Question number {n}?,Answer {n}.\n" for n in range(1, rows + 1))
    return ("question,answer\n" + "".join(lines)).encode()


def json_rows(rows: int) -> bytes:
    """A JSON list of ``rows`` small, valid entries."""
    items = ",".join(f'{{"question": "Question number {n}?", "answer": "Answer {n}."}}' for n in range(1, rows + 1))
    return f"[{items}]".encode()


DEEP_JSON = b"[" * 100_000  # issue 10: a 500 with the debug page

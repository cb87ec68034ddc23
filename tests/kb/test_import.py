import json

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from kb.importing import ImportFileError, entries_import, read_rows
from kb.models import Entry, Variant

pytestmark = pytest.mark.django_db


def test_demo_knowledge_base_imports_in_both_languages():
    call_command("kb_import", str(settings.KB_DEMO_FILE), verbosity=0)
    demo = json.loads(settings.KB_DEMO_FILE.read_text())
    assert 30 <= len(demo) <= 50
    assert Entry.objects.count() == len(demo)
    assert set(Entry.objects.values_list("language", flat=True)) == {"en", "zh"}
    assert set(Entry.objects.values_list("category", flat=True)) == {
        "orders",
        "shipping",
        "returns",
        "payment",
        "account",
    }
    assert Variant.objects.count() == len(demo) + sum(len(item["variants"]) for item in demo)


def test_reimport_updates_instead_of_duplicating(tmp_path):
    path = tmp_path / "faq.csv"
    path.write_text(
        "question,answer,category,language,variants\nHow do I pay?,By card.,payment,en,pay options|payment methods\n"
    )
    call_command("kb_import", str(path), verbosity=0)
    path.write_text(
        "question,answer,category,language,variants\nHow do I pay?,By card or PayPal.,payment,en,pay options\n"
    )
    call_command("kb_import", str(path), verbosity=0)
    entry = Entry.objects.get()
    assert entry.answer == "By card or PayPal."
    assert sorted(entry.variants.values_list("text", flat=True)) == ["How do I pay?", "pay options"]


def test_bad_rows_are_all_reported_and_nothing_is_saved(tmp_path):
    path = tmp_path / "faq.json"
    path.write_text(
        json.dumps(
            [
                {"question": "Good one", "answer": "fine"},
                {"question": "", "answer": "no question"},
                {"question": "Klingon?", "answer": "x", "language": "tlh"},
                {"question": "Good one", "answer": "again"},
                {"question": "Typo", "answer": "x", "publisehd": True},
                {"question": "Draft?", "answer": "x", "published": "maybe"},
            ]
        )
    )
    result = entries_import(rows=read_rows(path))
    assert result.errors == [
        "row 2: question is empty",
        "row 3: unknown language 'tlh' (known: en, zh)",
        "row 4: same question as row 1",
        "row 5: unknown field(s): publisehd",
        "row 6: published must be true or false, not 'maybe'",
    ]
    assert Entry.objects.count() == 0
    with pytest.raises(CommandError, match="5 row\\(s\\) have errors; nothing was saved"):
        call_command("kb_import", str(path), verbosity=0)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("faq.csv", "question;answer\nq;a\n", "lacks column"),
        ("faq.csv", b"question,answer\n\xff\xfe,x\n", "not UTF-8"),
        ("faq.json", "{not json", "not valid JSON"),
        ("faq.json", "[" * 100_000, "nested too deeply"),  # issue 10: was a 500 with the debug page
        ("faq.json", '{"question": "q"}', "list of objects"),
        ("faq.txt", "q", "unsupported file type"),
    ],
)
def test_unreadable_files_get_a_clear_message(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ImportFileError, match=message):
        read_rows(path)
    with pytest.raises(CommandError, match=message):
        call_command("kb_import", str(path), verbosity=0)


def test_xlsx_reading_is_bounded_in_rows_and_columns(monkeypatch):
    # Issue 10: one cell in column XFD padded every row to 16,384 cells (+220 MB from an 18 KB
    # file); a sheet declaring millions of rows was read whole.
    import io
    import tracemalloc

    from openpyxl import Workbook

    from kb import importing

    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["question", "answer"])
    for number in range(30):
        sheet.append([f"question {number}", f"answer {number}"])
    sheet["XFD3"] = "far away"
    buffer = io.BytesIO()
    workbook.save(buffer)
    tracemalloc.start()
    rows = importing.read_rows_from_bytes("far.xlsx", buffer.getvalue())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(rows) == 30 and set(rows[0]) == {"question", "answer"}
    # Read whole, the 31 rows padded to column XFD hold 500,000 cells (over 4 MB of lists alone).
    assert peak < 2 * 2**20, f"reading a 31-row sheet peaked at {peak / 2**20:.1f} MB"

    monkeypatch.setattr(importing, "XLSX_MAX_ROWS", 10)
    with pytest.raises(ImportFileError, match="more than 10 rows"):
        importing.read_rows_from_bytes("long.xlsx", buffer.getvalue())

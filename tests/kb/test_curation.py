"""Editors' tools: import preview and confirm, export round trips, BANKING77 layout, bulk actions,
history and revert (hit testing: tests/chatbot/test_hit_testing.py)."""

import io
import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from openpyxl import load_workbook

from kb import services
from kb.exporting import export_rows, render
from kb.importing import entries_import, read_rows, read_rows_from_bytes
from kb.models import EmbeddingState, Entry, IndexVersion, Variant
from tests.factories import entries_create, kb_embed_and_publish, upload

pytestmark = pytest.mark.django_db


def test_export_round_trips_through_import_in_every_format():
    entries_create()
    rows = export_rows()
    for fmt in ("csv", "json", "xlsx"):
        data = render(rows, fmt)
        again = read_rows_from_bytes(f"kb.{fmt}", data)
        result = entries_import(rows=again, dry_run=True)
        assert result.ok and (result.created, result.updated) == (0, 4), fmt
        assert [row[2] for row in result.plan] == [row["question"] for row in rows]
    workbook = load_workbook(io.BytesIO(render(rows, "xlsx")))
    header, first = list(workbook.active.iter_rows(values_only=True))[:2]
    assert header == ("question", "answer", "category", "language", "published", "variants")
    assert (
        first[0] == "How do I track my order?"
        and first[5] == "Where is my package?|track my parcel|has my order shipped yet"
    )


def test_exports_write_formula_like_text_as_text_and_round_trip():
    # Issue 10: an entry question "=HYPERLINK(...)" was written verbatim to CSV and as a real
    # formula cell to XLSX, where it runs when an editor opens the file.
    hostile = ['=HYPERLINK("http://evil.example","click")', "+1 555 0100", "-2 days", "@SUM(A1:A2)"]
    for number, question in enumerate(hostile):
        services.entry_create(question=question, answer=f"answer {number}", variants=[f"\tvariant {number}"])
    rows = export_rows()
    text = render(rows, "csv").decode("utf-8")
    for question in hostile:
        assert f"'{question}" in text.replace('""', '"')
    workbook = load_workbook(io.BytesIO(render(rows, "xlsx")))
    cells = [cell for row in workbook.active.iter_rows(min_row=2) for cell in row if isinstance(cell.value, str)]
    assert {cell.data_type for cell in cells} == {"s"}  # no formula cell anywhere
    assert sorted(cell.value for cell in cells if cell.column == 1) == sorted(hostile)
    for fmt in ("csv", "xlsx"):
        again = read_rows_from_bytes(f"kb.{fmt}", render(rows, fmt))
        assert sorted(row["question"] for row in again) == sorted(hostile), fmt


def test_kb_export_command_writes_a_reimportable_file(tmp_path):
    entries_create()
    target = tmp_path / "out.json"
    call_command("kb_export", str(target), verbosity=0)
    exported = json.loads(target.read_text())
    assert [row["question"] for row in exported] == list(
        Entry.objects.order_by("id").values_list("question", flat=True)
    )
    Entry.objects.all().delete()
    call_command("kb_import", str(target), verbosity=0)
    assert Variant.objects.count() == sum(1 + len(row["variants"]) for row in exported)
    with pytest.raises(CommandError, match="unsupported file type"):
        call_command("kb_export", str(tmp_path / "out.txt"), verbosity=0)


def test_banking77_phrasing_layout_becomes_one_entry_per_category(banking77_train):
    rows = read_rows(banking77_train)
    assert len(rows) == 77
    card_arrival = next(row for row in rows if row["category"] == "card_arrival")
    assert card_arrival["question"] == "I am still waiting on my card?"
    assert card_arrival["answer"] == "(intent: card_arrival)" and len(card_arrival["variants"]) > 100
    result = entries_import(rows=rows[:5])
    assert result.created == 5
    entry = Entry.objects.get(category="card_arrival")
    assert entry.variants.count() == 1 + len(card_arrival["variants"])
    # A placeholder is no answer for a customer: imported unpublished, for an editor to finish.
    assert not Entry.objects.filter(is_published=True).exists()


def test_a_phrasing_file_without_answers_never_reaches_customers_unless_published_on_purpose(tmp_path):
    from chatbot.pipeline import answer_question
    from tests.factories import kb_embed_and_publish

    path = tmp_path / "intents.csv"
    path.write_text(
        "text,category\nMy card was declined,card_declined\nwhy was my card refused,card_declined\n"
        "where is my new card,card_arrival\nmy card has not arrived,card_arrival\n"
    )
    call_command("kb_import", str(path), verbosity=0)
    kb_embed_and_publish()
    assert set(Entry.objects.values_list("is_published", flat=True)) == {False}
    answer = answer_question("my card was declined", llm_available=False)
    assert "(intent:" not in answer.text and not answer.hits

    call_command("kb_import", str(path), "--publish", verbosity=0)  # a benchmark's explicit choice
    kb_embed_and_publish()
    assert set(Entry.objects.values_list("is_published", flat=True)) == {True}
    assert answer_question("my card was declined", llm_available=False).hits


def test_xlsx_import_with_bad_cells_reports_rows(tmp_path):
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["question", "answer", "language", "category"])
    sheet.append(["Fine question", "Fine answer", "en", "orders"])
    sheet.append(["No answer", None, "en", "orders"])
    sheet.append(["Too long category", "x", "en", "c" * 101])
    buffer = io.BytesIO()
    workbook.save(buffer)
    result = entries_import(rows=read_rows_from_bytes("faq.xlsx", buffer.getvalue()))
    assert result.errors == ["row 2: answer is empty", "row 3: category is longer than 100 characters"]
    assert Entry.objects.count() == 0


def test_admin_import_previews_then_saves_on_confirm(editor_client):
    entries_create()
    csv_bytes = (
        b"question,answer,category,language,variants\n"
        b"How do I track my order?,Use the tracking link in your email.,orders,en,where is it\n"
        b"Do you ship to Canada?,Yes.,shipping,en,canada delivery|ship to toronto\n"
    )
    preview = editor_client.post("/admin/kb/entry/import/", {"file": upload("new.csv", csv_bytes)})
    body = preview.content.decode()
    assert preview.status_code == 200 and "1 new, 1 updated" in body
    assert not Entry.objects.filter(question="Do you ship to Canada?").exists()  # preview saves nothing
    token = re.search(r'name="confirm" value="([0-9a-f]+)"', body).group(1)
    done = editor_client.post("/admin/kb/entry/import/", {"confirm": token})
    assert done.status_code == 302
    assert Entry.objects.get(question="Do you ship to Canada?").variants.count() == 3
    assert Entry.objects.get(question="How do I track my order?").answer == "Use the tracking link in your email."
    assert Entry.objects.count() == 5


def test_admin_import_lists_row_errors_and_saves_nothing(editor_client):
    bad = b"question,answer,language\nGood,fine,en\n,no question,en\nKlingon,x,tlh\n"
    response = editor_client.post("/admin/kb/entry/import/", {"file": upload("bad.csv", bad)})
    body = response.content.decode()
    assert "row 2: question is empty" in body and "row 3: unknown language" in body
    assert 'name="confirm"' not in body and Entry.objects.count() == 0
    broken = editor_client.post("/admin/kb/entry/import/", {"file": upload("bad.json", b"{oops")})
    assert "not valid JSON" in broken.content.decode()


def test_bulk_actions_publish_unpublish_reembed(editor_client):
    entries = entries_create()
    kb_embed_and_publish()
    ids = [entries[0].id, entries[1].id]
    editor_client.post("/admin/kb/entry/", {"action": "unpublish", "_selected_action": ids})
    assert list(Entry.objects.filter(is_published=False).values_list("id", flat=True)) == ids
    editor_client.post("/admin/kb/entry/", {"action": "publish", "_selected_action": ids})
    assert not Entry.objects.filter(is_published=False).exists()
    editor_client.post("/admin/kb/entry/", {"action": "reembed", "_selected_action": ids})
    pending = Variant.objects.filter(is_dirty=True)
    assert set(pending.values_list("entry_id", flat=True)) == set(ids)
    # Entries being re-embedded keep answering from their previous vectors meanwhile.
    version = services.index_publish()
    assert version.entry_count == 4 and version.vector_count == Variant.objects.count()
    services.variants_embed_batch(limit=100)
    assert not Variant.objects.filter(is_dirty=True).exists()


def test_changelist_filters_by_embedding_state(editor_client):
    entries = entries_create()
    services.variants_embed_batch(limit=100)
    Variant.objects.filter(entry=entries[0]).update(
        is_dirty=True, embedding_state=EmbeddingState.FAILED, embedding_error="model exploded"
    )
    Variant.objects.filter(entry=entries[1]).update(is_dirty=True, embedding_state=EmbeddingState.PENDING)
    failed = editor_client.get("/admin/kb/entry/?embedding=failed").content.decode()
    pending = editor_client.get("/admin/kb/entry/?embedding=pending").content.decode()
    embedded = editor_client.get("/admin/kb/entry/?embedding=embedded").content.decode()
    assert entries[0].question in failed and entries[1].question not in failed
    assert entries[1].question in pending and entries[0].question not in pending
    assert entries[2].question in embedded and entries[0].question not in embedded
    change_page = editor_client.get(f"/admin/kb/entry/{entries[0].id}/change/").content.decode()
    assert "model exploded" in change_page


def test_history_records_who_changed_what_and_revert_restores_it(editor_client):
    entry = entries_create()[0]
    editor = get_user_model().objects.get(username="editor")
    original_answer = entry.answer
    data = {
        "question": entry.question,
        "answer": "A changed answer.",
        "category": "orders",
        "language": "en",
        "is_published": "on",
        "variants-TOTAL_FORMS": "0",
        "variants-INITIAL_FORMS": "0",
        "variants-MIN_NUM_FORMS": "0",
        "variants-MAX_NUM_FORMS": "1000",
    }
    assert editor_client.post(f"/admin/kb/entry/{entry.id}/change/", data).status_code == 302
    records = list(entry.history.order_by("history_date"))
    assert [r.answer for r in records][-1] == "A changed answer." and records[-1].history_user == editor
    history_page = editor_client.get(f"/admin/kb/entry/{entry.id}/history/").content.decode()
    assert "editor" in history_page
    # Revert to the first version through simple-history's admin form.
    first = records[0]
    revert = editor_client.post(
        f"/admin/kb/entry/{entry.id}/history/{first.history_id}/",
        {
            **data,
            "answer": first.answer,
        },
    )
    assert revert.status_code == 302
    entry.refresh_from_db()
    assert entry.answer == original_answer


def test_index_versions_are_listed_for_editors(editor_client):
    entries_create()
    kb_embed_and_publish()
    page = editor_client.get("/admin/kb/indexversion/").content.decode()
    assert IndexVersion.objects.get().embedder in page

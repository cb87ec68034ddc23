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
from tests.kb.test_admin import change_form

pytestmark = pytest.mark.django_db


def test_export_round_trips_through_import_in_every_format():
    entries_create()
    rows = export_rows()
    for fmt in ("csv", "json", "xlsx"):
        data = render(rows, fmt)
        again = read_rows_from_bytes(f"kb.{fmt}", data)
        result = entries_import(rows=again, dry_run=True)
        assert result.ok and (result.created, result.updated) == (0, 4), fmt
        assert [row.question for row in result.plan] == [row["question"] for row in rows]
    workbook = load_workbook(io.BytesIO(render(rows, "xlsx")))
    header, first = list(workbook.active.iter_rows(values_only=True))[:2]
    assert header == ("question", "answer", "category", "language", "published", "variants", "answer_en", "answer_zh")
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
    services.index_publish()  # embedded means searchable: in the live index
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


def _change_post(entry, *, question=None, delete=()):
    """The entry's change form as a browser posts it (tests.kb.test_admin.change_form), with
    another question and the phrasings ``delete`` names deleted."""
    doomed = {f"DELETE_{pk}": True for pk in entry.variants.filter(text__in=delete).values_list("pk", flat=True)}
    return {**change_form(entry, **doomed), **({"question": question} if question else {})}


def _phrasings(entry):
    return sorted(entry.variants.filter(is_primary=False).values_list("text", flat=True))


def test_a_revert_restores_the_phrasings_of_that_version_and_the_history_shows_them(editor_client):
    entry = entries_create()[0]
    kb_embed_and_publish()
    first = entry.history.get()
    assert (
        sorted(first.phrasings)
        == _phrasings(entry)
        == ["Where is my package?", "has my order shipped yet", "track my parcel"]
    )

    # Delete a phrasing and change the question in one save: one history row holds both.
    data = _change_post(entry, question="Where is my order?", delete=["track my parcel"])
    assert editor_client.post(f"/admin/kb/entry/{entry.id}/change/", data).status_code == 302
    entry.refresh_from_db()
    latest = entry.history.latest("history_date")
    assert entry.history.count() == 2 and latest.question == "Where is my order?"
    assert sorted(latest.phrasings) == _phrasings(entry) == ["Where is my package?", "has my order shipped yet"]
    history_page = editor_client.get(f"/admin/kb/entry/{entry.id}/history/").content.decode()
    assert "− track my parcel" in history_page

    # The revert form says what comes back; reverting brings back the question and the phrasing.
    form = editor_client.get(f"/admin/kb/entry/{entry.id}/history/{first.history_id}/").content.decode()
    assert "brings back 1 (track my parcel)" in form
    revert = _change_post(entry, question=first.question)
    assert editor_client.post(f"/admin/kb/entry/{entry.id}/history/{first.history_id}/", revert).status_code == 302
    entry.refresh_from_db()
    assert entry.question == "How do I track my order?"
    assert _phrasings(entry) == ["Where is my package?", "has my order shipped yet", "track my parcel"]
    restored = entry.variants.get(text="track my parcel")
    assert restored.is_dirty  # embedded again, then searchable with the next index version
    newest = entry.history.latest("history_date")
    assert sorted(newest.phrasings) == _phrasings(entry) and entry.history.count() == 3


def test_phrasing_changes_through_the_api_services_are_in_the_entry_history():
    entry = entries_create()[0]
    variant = services.variant_create(entry=entry, text="parcel status")
    assert "parcel status" in entry.history.latest("history_date").phrasings
    services.variant_update(variant=variant, text="parcel state")
    assert "parcel state" in entry.history.latest("history_date").phrasings
    services.variant_delete(variant=Variant.objects.get(pk=variant.pk))
    latest = entry.history.latest("history_date")
    assert "parcel state" not in latest.phrasings and entry.history.count() == 4
    # Reverting to the version with "parcel status" restores it.
    version = next(row for row in entry.history.all() if "parcel status" in row.phrasings)
    services.entry_revert(entry=entry, version_id=version.history_id, question=entry.question)
    assert "parcel status" in _phrasings(entry)
    # A deletion's history row keeps the phrasings it had.
    entry_id = entry.id
    services.entry_delete(entry=entry)
    assert "parcel status" in Entry.history.filter(id=entry_id, history_type="-").get().phrasings


def test_a_user_who_may_only_view_entries_cannot_revert(client):
    from django.contrib.auth.models import Permission

    entry = entries_create()[0]
    first = entry.history.get()
    services.entry_update(entry=entry, answer="Changed.")
    viewer = get_user_model().objects.create_user("viewer", password="pw-viewer-123", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_entry"))
    client.force_login(viewer)
    response = client.post(f"/admin/kb/entry/{entry.id}/history/{first.history_id}/", _change_post(entry))
    assert response.status_code == 403
    entry.refresh_from_db()
    assert entry.answer == "Changed."


def test_the_import_preview_shows_each_row_and_warns_about_answers_that_are_not_answers(editor_client):
    csv = (
        "question,answer,category,language,published,variants\n"
        "Do you ship to Canada?,Yes: 5-8 working days.,Shipping and delivery,en,true,ship canada|canada delivery\n"
        "我的卡被拒了怎么办？,TODO,Cards,zh,true,\n"
        "Can I pay later?,,Payments,en,false,\n"
    )
    page = editor_client.post("/admin/kb/entry/import/", {"file": upload("faq.csv", csv)}).content.decode()
    # An empty answer is a row error: nothing to preview or confirm.
    assert "row 3: answer is empty" in page and 'name="confirm"' not in page

    csv = csv.replace("Can I pay later?,,", "Can I pay later?,(intent: pay_later),")
    page = editor_client.post("/admin/kb/entry/import/", {"file": upload("faq.csv", csv)}).content.decode()
    table = page[page.index('id="import-preview"') :]
    for text in ("Yes: 5-8 working days.", "Shipping and delivery", "<td>zh</td>", "<td>3</td>"):
        assert text in table, text
    assert "placeholder answer (TODO)" in table and "placeholder answer ((intent: pay_later))" in table
    assert "2 rows have an answer that looks like no answer" in page
    assert "1 of 3 published as the file says" not in page and "2 of 3 published as the file says" in page
    # Unpublished is the default (the first, highlighted button) when answers look missing.
    assert re.search(r'<button type="submit" class="button default" name="unpublished" value="1"', page)
    token = re.search(r'name="confirm" value="([0-9a-f]+)"', page).group(1)
    confirm = editor_client.post(
        "/admin/kb/entry/import/", {"confirm": token, "unpublished": "1", "filename": "faq.csv"}
    )
    assert confirm.status_code == 302 and "/import/jobs/" in confirm.url
    assert Entry.objects.count() == 3 and not Entry.objects.filter(is_published=True).exists()

    # After confirm, the progress view follows the entries until they are searchable.
    progress = editor_client.get(confirm.url).content.decode()
    assert "0 of 3</b> entries searchable" in progress and 'http-equiv="refresh"' in progress
    assert "faq.csv" in progress
    kb_embed_and_publish()
    progress = editor_client.get(confirm.url).content.decode()
    assert "3 of 3</b> entries searchable" in progress and 'id="import-searchable"' in progress
    assert "customers get nothing from them until you" in progress and 'http-equiv="refresh"' not in progress


def test_a_file_with_answers_is_published_as_it_says_by_default(editor_client):
    csv = "question,answer\nDo you ship to Canada?,Yes.\nDo you ship to Peru?,No.\n"
    page = editor_client.post("/admin/kb/entry/import/", {"file": upload("faq.csv", csv)}).content.decode()
    assert 'id="import-warnings"' not in page
    assert re.search(r'<button type="submit" class="button default" id="import-published">Confirm import', page)
    token = re.search(r'name="confirm" value="([0-9a-f]+)"', page).group(1)
    confirm = editor_client.post("/admin/kb/entry/import/", {"confirm": token})
    assert Entry.objects.filter(is_published=True).count() == 2
    kb_embed_and_publish()
    progress = editor_client.get(confirm.url).content.decode()
    assert "2 of 2</b> entries searchable" in progress and "and answers customers" in progress


def test_answers_per_language_round_trip_through_export_and_import():
    entries = entries_create()
    services.entry_update(entry=entries[0], translations={"zh": "在“账户 > 订单”里点“跟踪包裹”。"})
    for fmt in ("csv", "json", "xlsx"):
        data = render(export_rows(), fmt)
        services.entry_update(entry=entries[0], translations={})
        result = entries_import(rows=read_rows_from_bytes(f"kb.{fmt}", data))
        assert result.ok, (fmt, result.errors)
        assert Entry.objects.get(pk=entries[0].pk).translations == {"zh": "在“账户 > 订单”里点“跟踪包裹”。"}, fmt
        assert Entry.objects.get(pk=entries[1].pk).translations == {}, fmt
    # A file with an answer_zh column sets it; a file without the column leaves it alone.
    csv = "question,answer,answer_zh\nWhat is your return policy?,Within 30 days.,30天内可退货。\n"
    assert entries_import(rows=read_rows_from_bytes("kb.csv", csv.encode())).ok
    assert Entry.objects.get(pk=entries[1].pk).translations == {"zh": "30天内可退货。"}
    csv = "question,answer\nWhat is your return policy?,Within 30 days of delivery.\n"
    assert entries_import(rows=read_rows_from_bytes("kb.csv", csv.encode())).ok
    assert Entry.objects.get(pk=entries[1].pk).translations == {"zh": "30天内可退货。"}


def test_index_versions_are_listed_for_editors(editor_client):
    entries_create()
    kb_embed_and_publish()
    page = editor_client.get("/admin/kb/indexversion/").content.decode()
    assert IndexVersion.objects.get().embedder in page

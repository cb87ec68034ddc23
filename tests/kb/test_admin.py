"""KB editors' admin: entries with phrasings inline, saved through the same rules as services."""

import re

import pytest
from django.db.models import F

from kb.models import EmbeddingState, Entry, KbRevision, Variant
from kb.services import kb_revision
from tests.factories import entries_create, kb_embed_and_publish

pytestmark = pytest.mark.django_db


def inline_management(prefix="variants", total=3, initial=0):
    return {
        f"{prefix}-TOTAL_FORMS": str(total),
        f"{prefix}-INITIAL_FORMS": str(initial),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }


def test_changelist_shows_entries_with_embedding_state(editor_client):
    entries_create()
    kb_embed_and_publish()
    response = editor_client.get("/admin/kb/entry/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "How do I track my order?" in body and "embedded" in body
    filtered = editor_client.get("/admin/kb/entry/?q=paypal")
    assert "Which payment methods do you accept?" in filtered.content.decode()
    assert "How do I track my order?" not in filtered.content.decode()


def test_adding_an_entry_with_inline_phrasings_queues_them_for_embedding(editor_client):
    before = kb_revision()
    response = editor_client.post(
        "/admin/kb/entry/add/",
        {
            "question": "Do you ship to Canada?",
            "answer": "Yes, in 5-8 business days.",
            "category": "shipping",
            "language": "en",
            "is_published": "on",
            **inline_management(),
            "variants-0-text": "shipping to canada",
            "variants-1-text": "deliver to Toronto?",
            "variants-2-text": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = Entry.objects.get(question="Do you ship to Canada?")
    phrasings = list(entry.variants.values_list("text", "is_primary", "is_dirty"))
    assert sorted(phrasings) == [
        ("Do you ship to Canada?", True, True),
        ("deliver to Toronto?", False, True),
        ("shipping to canada", False, True),
    ]
    assert kb_revision() > before


def test_editing_the_question_in_admin_moves_the_primary_phrasing(editor_client):
    entry = entries_create()[0]
    kb_embed_and_publish()
    variants = list(entry.variants.order_by("id"))
    data = {
        "question": "How can I follow my delivery?",
        "answer": entry.answer,
        "category": "orders",
        "language": "en",
        "is_published": "on",
        **inline_management(total=len(variants), initial=len(variants)),
    }
    for number, variant in enumerate(variants):
        data[f"variants-{number}-id"] = str(variant.id)
        data[f"variants-{number}-entry"] = str(entry.id)
        data[f"variants-{number}-text"] = variant.text
    response = editor_client.post(f"/admin/kb/entry/{entry.id}/change/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    primary = entry.variants.get(is_primary=True)
    assert (primary.text, primary.is_dirty) == ("How can I follow my delivery?", True)
    assert entry.variants.filter(is_dirty=True).count() == 1


def test_deleting_entries_in_bulk_bumps_the_revision(editor_client):
    entries = entries_create()
    before = KbRevision.objects.get().value
    response = editor_client.post(
        "/admin/kb/entry/",
        {
            "action": "delete_selected",
            "_selected_action": [entries[0].id, entries[1].id],
            "post": "yes",
        },
    )
    assert response.status_code == 302
    assert Entry.objects.count() == 2 and KbRevision.objects.get().value > before


def phrasings_embedded():
    """Mark every phrasing embedded (as a worker would), without loading a model."""
    Variant.objects.update(is_dirty=False, embedded_hash=F("content_hash"), embedding_state=EmbeddingState.EMBEDDED)


def change_form(entry, **texts_by_id):
    """The entry's change form as the browser posts it, with the given phrasings' texts changed
    (``DELETE_<id>`` deletes one) and ``new`` a list of phrasings added."""
    new = texts_by_id.pop("new", [])
    variants = list(entry.variants.order_by("-is_primary", "id"))
    data = {
        "question": entry.question,
        "answer": entry.answer,
        "category": entry.category,
        "language": entry.language,
        "is_published": "on",
        **inline_management(total=len(variants) + len(new), initial=len(variants)),
    }
    for number, variant in enumerate(variants):
        data[f"variants-{number}-id"] = str(variant.id)
        data[f"variants-{number}-entry"] = str(entry.id)
        data[f"variants-{number}-text"] = texts_by_id.get(f"v{variant.id}", variant.text)
        if texts_by_id.get(f"DELETE_{variant.id}"):
            data[f"variants-{number}-DELETE"] = "on"
    for number, text in enumerate(new, start=len(variants)):
        data[f"variants-{number}-text"] = text
    return data


def test_inline_phrasing_edits_go_through_the_phrasing_services(editor_client):
    entry = entries_create()[0]
    phrasings_embedded()
    primary, package, parcel, shipped = entry.variants.order_by("-is_primary", "id")
    before = kb_revision()
    data = change_form(
        entry,
        **{f"v{package.id}": "Where  is my   package now?", f"DELETE_{parcel.id}": True, "new": ["parcel status"]},
    )
    response = editor_client.post(f"/admin/kb/entry/{entry.id}/change/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    rows = {text: (pk, dirty) for pk, text, dirty in entry.variants.values_list("id", "text", "is_dirty")}
    # Edited in place (same row, whitespace collapsed as the services do), dirty again; the
    # untouched ones keep their vectors; the deleted one is gone; the new one waits.
    assert rows["Where is my package now?"] == (package.id, True)
    assert rows[primary.text] == (primary.id, False) and rows[shipped.text] == (shipped.id, False)
    assert "track my parcel" not in rows and rows["parcel status"][1] is True
    assert kb_revision() > before


def test_the_primary_phrasing_is_changed_through_the_question_only(editor_client):
    entry = entries_create()[0]
    primary = entry.variants.get(is_primary=True)
    # Shown among the phrasings but not editable there: the question field is the one place.
    page = editor_client.get(f"/admin/kb/entry/{entry.id}/change/").content.decode()
    row = re.search(r'<textarea[^>]*name="variants-0-text"[^>]*>', page) or re.search(
        r'<input[^>]*name="variants-0-text"[^>]*>', page
    )
    assert row and "disabled" in row.group(0), row
    assert "edit it in the Question field above" in page
    # A post that changes it anyway changes nothing; deleting it is refused with the reason.
    editor_client.post(f"/admin/kb/entry/{entry.id}/change/", change_form(entry, **{f"v{primary.id}": "Track it"}))
    assert entry.variants.get(is_primary=True).text == "How do I track my order?"
    response = editor_client.post(
        f"/admin/kb/entry/{entry.id}/change/", change_form(entry, **{f"DELETE_{primary.id}": True})
    )
    assert response.status_code == 200 and "edit the entry&#x27;s question instead" in response.content.decode()
    assert entry.variants.get(is_primary=True).text == "How do I track my order?"


def test_phrasings_that_repeat_the_question_or_each_other_are_refused(editor_client):
    entry = entries_create()[0]
    count = entry.variants.count()
    again = editor_client.post(
        f"/admin/kb/entry/{entry.id}/change/", change_form(entry, new=["How do I  track my order?"])
    )
    assert "is the entry&#x27;s question already" in again.content.decode()
    twice = editor_client.post(f"/admin/kb/entry/{entry.id}/change/", change_form(entry, new=["a  b", "a b"]))
    assert "is there twice" in twice.content.decode()
    assert entry.variants.count() == count


def test_the_published_checkbox_of_the_changelist_saves_through_the_services(editor_client):
    entries = entries_create()
    before = kb_revision()
    data = {
        "form-TOTAL_FORMS": str(len(entries)),
        "form-INITIAL_FORMS": str(len(entries)),
        "form-MIN_NUM_FORMS": "0",
        "form-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    for number, entry in enumerate(entries):
        data[f"form-{number}-id"] = str(entry.id)
        if number:
            data[f"form-{number}-is_published"] = "on"
    response = editor_client.post("/admin/kb/entry/", data)
    assert response.status_code == 302
    assert list(Entry.objects.filter(is_published=False)) == [entries[0]] and kb_revision() > before


def test_the_import_preview_keeps_the_upload_in_the_shared_storage_until_confirmed(editor_client, settings):
    from django.core.files.storage import storages
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.STORAGES = {**settings.STORAGES, "kb_imports": {"BACKEND": "django.core.files.storage.InMemoryStorage"}}
    upload = SimpleUploadedFile("faq.csv", b"question,answer\nDo you ship to Canada?,Yes.\n")
    preview = editor_client.post("/admin/kb/entry/import/", {"file": upload})
    token = re.search(r'name="confirm" value="([0-9a-f]+)"', preview.content.decode()).group(1)
    assert storages["kb_imports"].listdir("")[1] == [f"{token}.csv"]
    assert editor_client.post("/admin/kb/entry/import/", {"confirm": token}).status_code == 302
    assert storages["kb_imports"].listdir("")[1] == [] and Entry.objects.filter(question="Do you ship to Canada?")
    # Confirmed once: the same token again (or an expired one) asks for the file again.
    again = editor_client.post("/admin/kb/entry/import/", {"confirm": token}, follow=True)
    assert "That upload has expired" in again.content.decode()


def test_saving_an_entry_unchanged_writes_no_history_and_publishes_nothing(editor_client):
    entry = entries_create()[0]
    kb_embed_and_publish()
    data = change_form(entry)
    history, revision = entry.history.count(), kb_revision()
    response = editor_client.post(f"/admin/kb/entry/{entry.id}/change/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert entry.history.count() == history and kb_revision() == revision

    # A real change still saves, with its history record.
    data["answer"] = entry.answer + " Updated."
    editor_client.post(f"/admin/kb/entry/{entry.id}/change/", data)
    entry.refresh_from_db()
    assert entry.answer.endswith("Updated.") and entry.history.count() == history + 1 and kb_revision() > revision


LONG_CATEGORY = "Card payment was declined or not accepted at the merchant (BANKING77)"


def test_the_entries_list_keeps_the_question_readable_and_filters_categories_from_a_dropdown(editor_client):
    entries = entries_create()
    Entry.objects.filter(pk=entries[0].pk).update(category=LONG_CATEGORY)
    page = editor_client.get("/admin/kb/entry/").content.decode()
    # The category is cut by CSS, its full name on hover; the filter is one drop-down.
    assert f'<span class="category-cell" title="{LONG_CATEGORY}">' in page and ".category-cell" in page
    select = page.split('class="select-filter"')[1].split("</select>")[0]
    assert select.count("<option") == 1 + len({LONG_CATEGORY, "returns", "payment", "account"})
    filtered = editor_client.get("/admin/kb/entry/?category=returns").content.decode()
    assert entries[1].question in filtered and entries[0].question not in filtered


def test_categories_are_renamed_and_merged_with_history(editor_client):
    entries = entries_create()
    page = editor_client.get("/admin/kb/entry/categories/").content.decode()
    assert "returns" in page and 'list="category-names"' in page
    response = editor_client.post("/admin/kb/entry/categories/", {"old": "returns", "new": "  Returns  and refunds "})
    assert response.status_code == 302
    assert Entry.objects.get(pk=entries[1].pk).category == "Returns and refunds"
    before = kb_revision()
    merged = editor_client.post(
        "/admin/kb/entry/categories/", {"old": "payment", "new": "Returns and refunds"}, follow=True
    ).content.decode()
    assert "Merged “payment” into “Returns and refunds”: 1 entries." in merged
    assert Entry.objects.filter(category="Returns and refunds").count() == 2 and kb_revision() > before
    assert Entry.objects.get(pk=entries[2].pk).history.latest("history_date").category == "Returns and refunds"
    # The entry page suggests the categories in use.
    change = editor_client.get(f"/admin/kb/entry/{entries[0].id}/change/").content.decode()
    assert 'list="id_category-choices"' in change and '<option value="Returns and refunds">' in change


def test_phrasings_pasted_in_bulk_are_added_once_each(editor_client):
    entry = entries_create()[0]
    before = set(entry.variants.values_list("text", flat=True))
    data = change_form(entry)
    pasted = ["where's my stuff", "", "  parcel   status ", "track my parcel", "How do I track my order?"]
    pasted.append("parcel status")
    data["more_phrasings"] = "\n".join(pasted)
    response = editor_client.post(f"/admin/kb/entry/{entry.id}/change/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    after = set(entry.variants.values_list("text", flat=True))
    assert after - before == {"where's my stuff", "parcel status"} and before <= after
    assert entry.history.count() == 2  # one save, one history row
    page = editor_client.get(f"/admin/kb/entry/{entry.id}/change/").content.decode()
    assert "kb/phrasings.js" in page and "#variants-group .tabular" in page

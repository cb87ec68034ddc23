"""KB editors' admin: entries with phrasings inline, saved through the same rules as services."""

import pytest
from django.contrib.auth import get_user_model

from kb.models import Entry, KbRevision
from kb.services import kb_revision
from tests.factories import entries_create, kb_embed_and_publish

pytestmark = pytest.mark.django_db


@pytest.fixture
def editor_client(client):
    user = get_user_model().objects.create_superuser("editor", "editor@example.com", "pw-editor-123")
    client.force_login(user)
    return client


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

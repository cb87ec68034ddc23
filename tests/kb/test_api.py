"""Knowledge-base REST API: entries and phrasings through kb.services, search through the chat
pipeline, file import, permissions, and the OpenAPI schema and offline docs."""

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from chatbot.selectors import thresholds_for
from kb import services
from kb.models import EDITORS_GROUP, EmbeddingState, Entry, Variant
from tests.factories import SHOP_ENTRIES, entries_create, kb_embed_and_publish, upload

pytestmark = pytest.mark.django_db

ENTRIES = "/api/kb/entries/"
VARIANTS = "/api/kb/variants/"
SEARCH = "/api/kb/search"
IMPORT = "/api/kb/import"


def make_user(username, *, staff=False, superuser=False, group=None, perms=()):
    """A user logged in through a session, as a browser would be."""
    User = get_user_model()
    if superuser:
        user = User.objects.create_superuser(username, f"{username}@example.com", "pw-12345678")
    else:
        user = User.objects.create_user(username, f"{username}@example.com", "pw-12345678", is_staff=staff)
    if group:
        # The group (and its permissions) comes from migration kb/0003, not from this test.
        user.groups.add(Group.objects.get(name=group))
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture
def editor():
    return make_user("editor", group=EDITORS_GROUP)


@pytest.fixture
def viewer():
    return make_user("viewer", perms=["kb.view_entry", "kb.view_variant"])


def body(response):
    return response.json()


# --- entries ----------------------------------------------------------------------------------


def test_create_entry_round_trips_its_phrasings_and_queues_embedding(editor, django_capture_on_commit_callbacks):
    before = services.kb_revision()
    with django_capture_on_commit_callbacks() as callbacks:
        response = editor.post(
            ENTRIES,
            {
                "question": "  Do you ship   to Canada? ",
                "answer": "Yes, in 5-8 business days.",
                "category": "shipping",
                "variants": ["shipping to canada", "deliver to Toronto?", "Do you ship to Canada?", "", "  "],
            },
            format="json",
        )
    assert response.status_code == 201, body(response)
    data = body(response)
    entry = Entry.objects.get()
    assert data["id"] == entry.id
    assert data["question"] == "Do you ship to Canada?"
    assert (data["category"], data["language"], data["is_published"]) == ("shipping", "en", True)
    # The primary phrasing (the question) and blanks are not alternates.
    assert data["variants"] == ["shipping to canada", "deliver to Toronto?"]
    assert data["embedding"] == {"state": "pending", "pending": 3, "failed": 0, "in_index": False, "errors": []}
    assert {"created_at", "updated_at"} <= set(data)
    assert list(entry.variants.values_list("text", "is_primary", "is_dirty")) == [
        ("Do you ship to Canada?", True, True),
        ("shipping to canada", False, True),
        ("deliver to Toronto?", False, True),
    ]
    assert services.kb_revision() == before + 1
    assert [callback.__name__ for callback in callbacks] == ["_enqueue_refresh"]

    fetched = editor.get(f"{ENTRIES}{entry.id}/")
    assert fetched.status_code == 200
    assert body(fetched)["variants"] == ["shipping to canada", "deliver to Toronto?"]


def test_list_is_paginated_filtered_and_searched_across_phrasings(editor):
    track, returns, payment, password = entries_create()
    services.entry_create(question="如何退货？", answer="30天内可以退货。", category="returns", language="zh")
    services.entry_update(entry=password, is_published=False)

    everything = body(editor.get(ENTRIES))
    assert everything["count"] == 5 and len(everything["results"]) == 5
    assert everything["results"][0]["question"] == track.question

    def ids(query):
        response = editor.get(ENTRIES, query)
        assert response.status_code == 200, body(response)
        return [item["id"] for item in body(response)["results"]]

    assert ids({"category": "returns", "language": "en"}) == [returns.id]
    assert len(ids({"language": "zh"})) == 1
    assert ids({"is_published": "false"}) == [password.id]
    # "parcel" appears only in an alternate phrasing; an entry matching twice is listed once.
    assert ids({"search": "parcel"}) == [track.id]
    assert ids({"search": "my"}) == [track.id, password.id]
    assert ids({"search": "PayPal"}) == [payment.id]
    assert editor.get(ENTRIES, {"language": "xx"}).status_code == 400


def test_listing_does_not_query_once_per_entry(editor):
    entries_create()

    def queries_for_one_page():
        with CaptureQueriesContext(connection) as queries:
            assert editor.get(ENTRIES).status_code == 200
        return len(queries)

    with_four = queries_for_one_page()
    entries_create([{**spec, "question": spec["question"] + " (copy)"} for spec in SHOP_ENTRIES])
    assert Entry.objects.count() == 8
    assert queries_for_one_page() == with_four


def test_api_edit_marks_phrasings_dirty_and_bumps_the_revision(editor):
    track = entries_create()[0]
    kb_embed_and_publish()
    assert not Variant.objects.filter(is_dirty=True).exists()
    before = services.kb_revision()

    response = editor.patch(f"{ENTRIES}{track.id}/", {"question": "How can I follow my delivery?"}, format="json")

    assert response.status_code == 200, body(response)
    data = body(response)
    assert data["question"] == "How can I follow my delivery?"
    assert data["variants"] == ["Where is my package?", "track my parcel", "has my order shipped yet"]
    assert data["embedding"] == {"state": "pending", "pending": 1, "failed": 0, "in_index": False, "errors": []}
    primary = track.variants.get(is_primary=True)
    assert (primary.text, primary.is_dirty, primary.embedding_state) == (
        "How can I follow my delivery?",
        True,
        EmbeddingState.PENDING,
    )
    assert list(Variant.objects.filter(is_dirty=True)) == [primary]
    assert services.kb_revision() == before + 1


def test_put_replaces_fields_and_phrasings_keeping_unchanged_vectors(editor):
    track = entries_create()[0]
    kb_embed_and_publish()
    response = editor.put(
        f"{ENTRIES}{track.id}/",
        {
            "question": track.question,
            "answer": "See Account > Orders.",
            "category": "delivery",
            "language": "en",
            "is_published": False,
            "variants": ["Where is my package?", "parcel status"],
        },
        format="json",
    )
    assert response.status_code == 200, body(response)
    track.refresh_from_db()
    assert (track.answer, track.category, track.is_published) == ("See Account > Orders.", "delivery", False)
    assert dict(track.variants.values_list("text", "is_dirty")) == {
        "How do I track my order?": False,
        "Where is my package?": False,
        "parcel status": True,
    }
    assert body(response)["variants"] == ["Where is my package?", "parcel status"]


def test_embedding_summary_reports_failures(editor):
    track = entries_create()[0]
    kb_embed_and_publish()
    services.entry_update(entry=track, variants=["Where is my package?", "parcel status", "order whereabouts"])
    failing = track.variants.get(text="parcel status")
    services.variants_mark_failed(variant_ids=[failing.id], reason="RuntimeError: model exploded")

    data = body(editor.get(f"{ENTRIES}{track.id}/"))

    assert data["embedding"] == {
        "state": "failed",
        "pending": 1,
        "failed": 1,
        "in_index": False,
        "errors": ["RuntimeError: model exploded"],
    }


def test_delete_entry_removes_its_phrasings_and_bumps_the_revision(editor):
    track, returns, *_ = entries_create()
    before = services.kb_revision()
    response = editor.delete(f"{ENTRIES}{track.id}/")
    assert response.status_code == 204
    assert not Entry.objects.filter(id=track.id).exists()
    assert not Variant.objects.filter(entry_id=track.id).exists()
    assert services.kb_revision() == before + 1
    assert editor.get(f"{ENTRIES}{track.id}/").status_code == 404


@pytest.mark.parametrize(
    "payload, field, message",
    [
        ({"question": "", "answer": "a"}, "detail", "question is empty"),
        ({"question": "   ", "answer": "a"}, "detail", "question is empty"),
        ({"question": "q", "answer": "  "}, "detail", "answer is empty"),
        ({"question": "q" * 501, "answer": "a"}, "detail", "longer than 500"),
        ({"question": "q", "answer": "a", "language": "xx"}, "detail", "unknown language 'xx' (known: en, zh)"),
        ({"question": "q", "answer": "a", "variants": ["v" * 501]}, "detail", "phrasing is longer than 500"),
        ({"answer": "a"}, "question", "required"),
        ({"question": 42, "answer": "a"}, "question", "Not a valid string"),
        ({"question": "q", "answer": None}, "answer", "may not be null"),
        ({"question": "q", "answer": "a", "variants": "track my parcel"}, "variants", "Expected a list"),
        ({"question": "q", "answer": "a", "variants": ["ok", 7]}, "variants", "Not a valid string"),
        ({"question": "q", "answer": "a", "variants": [["nested"]]}, "variants", "Not a valid string"),
        ({"question": "q", "answer": "a", "is_published": "maybe"}, "is_published", "valid boolean"),
        ({"question": "q", "answer": "a", "category": "c" * 101}, "category", "no more than 100"),
    ],
)
def test_create_rejects_bad_input_with_a_clean_400(editor, payload, field, message):
    before = services.kb_revision()
    response = editor.post(ENTRIES, payload, format="json")
    assert response.status_code == 400
    error = body(response)[field]
    assert message in (error if isinstance(error, str) else json.dumps(error))
    assert Entry.objects.count() == 0 and Variant.objects.count() == 0
    assert services.kb_revision() == before


def test_update_rejects_bad_input_and_keeps_the_entry(editor):
    track = entries_create()[0]
    url = f"{ENTRIES}{track.id}/"
    assert body(editor.patch(url, {"answer": ""}, format="json")) == {"detail": "answer is empty"}
    assert body(editor.patch(url, {"language": "fr"}, format="json")) == {
        "detail": "unknown language 'fr' (known: en, zh)"
    }
    assert editor.patch(url, {"variants": {"a": 1}}, format="json").status_code == 400
    track.refresh_from_db()
    assert (track.answer, track.language) == ("Open Account > Orders and click Track package.", "en")
    assert track.variants.count() == 4


# --- phrasings --------------------------------------------------------------------------------


def test_variants_list_filters_by_entry(editor):
    track, returns, *_ = entries_create()
    response = editor.get(VARIANTS, {"entry": returns.id})
    assert response.status_code == 200
    results = body(response)["results"]
    assert [(item["text"], item["is_primary"]) for item in results] == [
        ("What is your return policy?", True),
        ("Can I send something back?", False),
        ("how many days do I have to return an item", False),
    ]
    assert all(item["entry"] == returns.id and item["embedding_state"] == "pending" for item in results)
    assert set(results[0]) == {"id", "entry", "text", "is_primary", "embedding_state", "embedding_error", "embedded_at"}
    assert body(editor.get(VARIANTS))["count"] == Variant.objects.count()


def test_add_a_phrasing_queues_embedding_and_shows_on_the_entry(editor, django_capture_on_commit_callbacks):
    entry = services.entry_create(question="Do you ship to Canada?", answer="Yes.")
    # Stand in for the commit of the entry's own transaction, which runs (and so clears) its callback.
    connection.run_on_commit.clear()
    before = services.kb_revision()
    with django_capture_on_commit_callbacks() as callbacks:
        response = editor.post(VARIANTS, {"entry": entry.id, "text": "  shipping   to canada "}, format="json")
    assert response.status_code == 201, body(response)
    data = body(response)
    assert (data["text"], data["is_primary"], data["embedding_state"], data["embedded_at"]) == (
        "shipping to canada",
        False,
        "pending",
        None,
    )
    variant = Variant.objects.get(id=data["id"])
    assert variant.is_dirty and variant.content_hash
    assert services.kb_revision() == before + 1
    assert [callback.__name__ for callback in callbacks] == ["_enqueue_refresh"]
    assert body(editor.get(f"{ENTRIES}{entry.id}/"))["variants"] == ["shipping to canada"]


def test_edit_a_phrasing_makes_it_dirty_again(editor):
    track = entries_create()[0]
    kb_embed_and_publish()
    variant = track.variants.get(text="track my parcel")
    before = services.kb_revision()
    response = editor.patch(f"{VARIANTS}{variant.id}/", {"text": "track my shipment"}, format="json")
    assert response.status_code == 200, body(response)
    assert (body(response)["text"], body(response)["embedding_state"]) == ("track my shipment", "pending")
    variant.refresh_from_db()
    assert (variant.text, variant.is_dirty) == ("track my shipment", True)
    assert services.kb_revision() == before + 1


def test_duplicate_phrasings_are_refused_with_400(editor):
    track = entries_create()[0]
    count = Variant.objects.count()
    for text in ["Where is my package?", "  Where is my   package? ", track.question]:
        response = editor.post(VARIANTS, {"entry": track.id, "text": text}, format="json")
        assert response.status_code == 400, text
        assert "already has the phrasing" in body(response)["detail"]
    other = track.variants.get(text="track my parcel")
    response = editor.patch(f"{VARIANTS}{other.id}/", {"text": "Where is my package?"}, format="json")
    assert response.status_code == 400 and "already has the phrasing" in body(response)["detail"]
    assert Variant.objects.count() == count
    assert Variant.objects.get(id=other.id).text == "track my parcel"
    # The connection is still usable after the refused writes (each ran in its own savepoint).
    assert editor.post(VARIANTS, {"entry": track.id, "text": "parcel status"}, format="json").status_code == 201


def test_primary_phrasing_cannot_be_edited_or_deleted_directly(editor):
    track = entries_create()[0]
    primary = track.variants.get(is_primary=True)
    for response in (
        editor.delete(f"{VARIANTS}{primary.id}/"),
        editor.patch(f"{VARIANTS}{primary.id}/", {"text": "Order tracking"}, format="json"),
    ):
        assert response.status_code == 400
        assert "edit the entry's question instead" in body(response)["detail"]
    primary.refresh_from_db()
    assert primary.text == track.question
    # is_primary is read-only: a new phrasing cannot claim it.
    response = editor.post(VARIANTS, {"entry": track.id, "text": "order tracking", "is_primary": True}, format="json")
    assert response.status_code == 201 and body(response)["is_primary"] is False
    assert track.variants.filter(is_primary=True).count() == 1


def test_delete_an_alternate_phrasing(editor):
    track = entries_create()[0]
    variant = track.variants.get(text="track my parcel")
    before = services.kb_revision()
    assert editor.delete(f"{VARIANTS}{variant.id}/").status_code == 204
    assert not Variant.objects.filter(id=variant.id).exists()
    assert services.kb_revision() == before + 1
    assert body(editor.get(f"{ENTRIES}{track.id}/"))["variants"] == ["Where is my package?", "has my order shipped yet"]


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"text": 12}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "v" * 501}, "text"),
        ({"entry": 999999, "text": "x"}, "entry"),
    ],
)
def test_bad_phrasing_input_is_a_400(editor, payload, field):
    track = entries_create()[0]
    count = Variant.objects.count()
    response = editor.post(VARIANTS, {"entry": track.id, **payload}, format="json")
    assert response.status_code == 400 and field in body(response)
    assert Variant.objects.count() == count


def test_a_phrasing_cannot_move_to_another_entry(editor):
    track, returns, *_ = entries_create()
    variant = track.variants.get(text="track my parcel")
    response = editor.patch(f"{VARIANTS}{variant.id}/", {"entry": returns.id}, format="json")
    assert response.status_code == 400 and "another entry" in body(response)["entry"][0]
    assert Variant.objects.get(id=variant.id).entry_id == track.id


# --- search -----------------------------------------------------------------------------------


def test_search_runs_the_chat_pipeline_and_ranks_the_paraphrased_entry_first(viewer):
    track, *_ = entries_create()
    version = kb_embed_and_publish()
    thresholds = thresholds_for(language="en")

    response = viewer.get(SEARCH, {"q": "where's my parcel?"})

    assert response.status_code == 200, body(response)
    data = body(response)
    assert data["query"] == "where's my parcel?"
    assert (data["source"], data["answer_entry_id"]) == ("faq", track.id)
    assert data["decision"] == {
        "kind": "faq",
        "reason": "best score reaches the answer threshold",
        "thresholds": thresholds.as_dict(),
        "index_version": version.pk,
        "language": "en",
        "search_mode": "dense",
    }
    hits = data["hits"]
    assert hits[0]["entry_id"] == track.id and hits[0]["question"] == track.question
    assert Variant.objects.get(id=hits[0]["variant_id"]).entry_id == track.id
    assert data["score"] == pytest.approx(hits[0]["score"]) and data["score"] >= thresholds.answer
    assert [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)
    assert len(hits) == 4 and len({hit["entry_id"] for hit in hits}) == 4
    assert {"embed", "search", "total"} <= set(data["timings_ms"])

    limited = body(viewer.get(SEARCH, {"q": "where's my parcel?", "k": 2}))
    assert [hit["entry_id"] for hit in limited["hits"]] == [hit["entry_id"] for hit in hits[:2]]


def test_search_hands_off_when_nothing_is_close_and_no_llm_is_configured(viewer):
    entries_create()
    kb_embed_and_publish()
    data = body(viewer.get(SEARCH, {"q": "What is the airspeed velocity of an unladen swallow?"}))
    assert data["source"] == "handoff" and data["answer_entry_id"] is None
    assert data["decision"]["kind"] == "handoff"
    assert data["decision"]["reason"] == "best score is below the answer threshold and no LLM is configured"
    assert data["score"] < thresholds_for(language="en").answer


def test_search_shows_the_did_you_mean_options(viewer):
    first = services.entry_create(question="Gift card A?", answer="A.", variants=["gift card"])
    second = services.entry_create(question="Gift card B?", answer="B.", variants=["gift card"])
    kb_embed_and_publish()
    data = body(viewer.get(SEARCH, {"q": "gift card"}))
    assert data["source"] == "clarify" and data["decision"]["kind"] == "clarify"
    assert {option["entry_id"] for option in data["decision"]["options"]} == {first.id, second.id}


@pytest.mark.parametrize(
    "params, field",
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "    "}, "q"),
        ({"q": "x" * 31}, "q"),
        ({"q": "where is my parcel", "k": 0}, "k"),
        ({"q": "where is my parcel", "k": 6}, "k"),
        ({"q": "where is my parcel", "k": "two"}, "k"),
    ],
)
def test_search_rejects_bad_queries(viewer, settings, params, field):
    settings.CHATBOT_MAX_MESSAGE_CHARS = 30
    settings.KB_SEARCH_TOP_K = 5
    response = viewer.get(SEARCH, params)
    assert response.status_code == 400 and field in body(response)


# --- import -----------------------------------------------------------------------------------


def test_import_csv_creates_and_updates(editor):
    entries_create()
    before = services.kb_revision()
    csv = (
        "question,answer,category,language,published,variants\n"
        "How do I track my order?,Use the tracking link in your email.,orders,en,true,where is my parcel\n"
        "Do you ship to Canada?,Yes.,shipping,en,true,shipping to canada|deliver to Toronto\n"
    )
    response = editor.post(IMPORT, {"file": upload("faq.csv", csv)}, format="multipart")
    assert response.status_code == 200, body(response)
    assert body(response) == {"created": 1, "updated": 1, "dry_run": False, "warnings": 0}
    assert Entry.objects.get(question="How do I track my order?").answer == "Use the tracking link in your email."
    canada = Entry.objects.get(question="Do you ship to Canada?")
    assert sorted(canada.variants.values_list("text", flat=True)) == [
        "Do you ship to Canada?",
        "deliver to Toronto",
        "shipping to canada",
    ]
    assert services.kb_revision() > before


def test_import_with_bad_rows_lists_them_and_saves_nothing(editor):
    rows = [
        {"question": "Good one", "answer": "fine"},
        {"question": "", "answer": "no question"},
        {"question": "Klingon?", "answer": "x", "language": "tlh"},
    ]
    before = services.kb_revision()
    response = editor.post(IMPORT, {"file": upload("faq.json", json.dumps(rows))}, format="multipart")
    assert response.status_code == 400
    assert body(response) == {
        "detail": "2 row(s) have errors; nothing was saved",
        "errors": ["row 2: question is empty", "row 3: unknown language 'tlh' (known: en, zh)"],
        "errors_more": 0,
    }
    assert Entry.objects.count() == 0 and Variant.objects.count() == 0
    assert services.kb_revision() == before


def test_import_dry_run_counts_without_saving(editor):
    track = entries_create()[0]
    before = services.kb_revision()
    rows = [
        {"question": track.question, "answer": "Changed?", "variants": ["parcel"]},
        {"question": "Do you ship to Canada?", "answer": "Yes."},
    ]
    response = editor.post(f"{IMPORT}?dry_run=1", {"file": upload("faq.json", json.dumps(rows))}, format="multipart")
    assert response.status_code == 200, body(response)
    assert body(response) == {"created": 1, "updated": 1, "dry_run": True, "warnings": 0}
    assert Entry.objects.count() == 4
    track.refresh_from_db()
    assert track.answer == "Open Account > Orders and click Track package."
    assert track.variants.count() == 4
    assert services.kb_revision() == before
    # A dry run of a bad file reports the same errors as the real import.
    bad = editor.post(f"{IMPORT}?dry_run=true", {"file": upload("faq.json", '[{"question": "q"}]')}, format="multipart")
    assert bad.status_code == 400 and body(bad)["errors"] == ["row 1: answer is empty"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("faq.txt", "question,answer\nq,a\n", "unsupported file type"),
        ("faq.json", "{not json", "not valid JSON"),
        ("faq.csv", "question;answer\nq;a\n", "lacks column"),
        ("faq.csv", b"question,answer\n\xff\xfe,x\n", "not UTF-8"),
    ],
)
def test_import_of_an_unreadable_file_is_a_400(editor, name, content, message):
    response = editor.post(IMPORT, {"file": upload(name, content)}, format="multipart")
    assert response.status_code == 400
    assert message in body(response)["detail"] and body(response)["errors"] == []
    assert Entry.objects.count() == 0


def test_import_xlsx_workbook(editor):
    from openpyxl import Workbook

    workbook = Workbook()
    workbook.active.append(["question", "answer", "category", "variants"])
    workbook.active.append(["Do you ship to Canada?", "Yes.", "shipping", "shipping to canada|deliver to Toronto"])
    content = io.BytesIO()
    workbook.save(content)
    response = editor.post(IMPORT, {"file": upload("faq.xlsx", content.getvalue())}, format="multipart")
    assert response.status_code == 200, body(response)
    assert body(response) == {"created": 1, "updated": 0, "dry_run": False, "warnings": 0}
    assert body(editor.get(ENTRIES))["results"][0]["variants"] == ["shipping to canada", "deliver to Toronto"]


def test_import_refuses_files_over_the_size_limit(editor, settings):
    settings.KB_IMPORT_MAX_BYTES = 40
    rows = json.dumps([{"question": "Do you ship to Canada?", "answer": "Yes."}])
    response = editor.post(IMPORT, {"file": upload("faq.json", rows)}, format="multipart")
    assert response.status_code == 400
    assert body(response)["detail"] == f"faq.json is {len(rows)} bytes; the limit is 40 bytes"
    assert Entry.objects.count() == 0


def test_import_without_a_file_or_with_a_bad_flag_is_a_400(editor):
    assert "file" in body(editor.post(IMPORT, {}, format="multipart"))
    response = editor.post(f"{IMPORT}?dry_run=maybe", {"file": upload("faq.json", "[]")}, format="multipart")
    assert response.status_code == 400 and "dry_run" in body(response)


def test_import_checks_column_limits_before_saving(editor):
    rows = [{"question": "Good one", "answer": "fine"}, {"question": "q", "answer": "a", "category": "c" * 101}]
    response = editor.post(IMPORT, {"file": upload("faq.json", json.dumps(rows))}, format="multipart")
    assert response.status_code == 400
    assert body(response)["errors"] == ["row 2: category is longer than 100 characters"]
    assert Entry.objects.count() == 0


# --- permissions ------------------------------------------------------------------------------


def test_anonymous_requests_are_refused():
    track = entries_create()[0]
    client = APIClient()
    for response in (
        client.get(ENTRIES),
        client.get(f"{ENTRIES}{track.id}/"),
        client.post(ENTRIES, {"question": "q", "answer": "a"}, format="json"),
        client.get(VARIANTS),
        client.get(SEARCH, {"q": "parcel"}),
        client.post(IMPORT, {"file": upload("faq.json", "[]")}, format="multipart"),
    ):
        assert response.status_code == 403
        assert body(response) == {"detail": "Authentication credentials were not provided."}
    assert Entry.objects.count() == 4


@pytest.mark.parametrize("kind", ["plain", "staff"])
def test_users_without_kb_permissions_can_neither_read_nor_write(kind):
    track = entries_create()[0]
    variant = track.variants.get(text="track my parcel")
    client = make_user(kind, staff=kind == "staff")
    for response in (
        client.get(ENTRIES),
        client.get(f"{ENTRIES}{track.id}/"),
        client.get(VARIANTS),
        client.get(SEARCH, {"q": "parcel"}),
        client.post(ENTRIES, {"question": "q", "answer": "a"}, format="json"),
        client.patch(f"{ENTRIES}{track.id}/", {"answer": "hacked"}, format="json"),
        client.delete(f"{ENTRIES}{track.id}/"),
        client.post(VARIANTS, {"entry": track.id, "text": "new"}, format="json"),
        client.patch(f"{VARIANTS}{variant.id}/", {"text": "hacked"}, format="json"),
        client.delete(f"{VARIANTS}{variant.id}/"),
        client.post(IMPORT, {"file": upload("faq.json", "[]")}, format="multipart"),
    ):
        assert response.status_code == 403
        assert body(response) == {"detail": "You do not have permission to perform this action."}
    track.refresh_from_db()
    assert track.answer == "Open Account > Orders and click Track package."
    assert Entry.objects.count() == 4 and Variant.objects.filter(id=variant.id, text="track my parcel").exists()


def test_view_permission_reads_but_cannot_write(viewer):
    track = entries_create()[0]
    assert viewer.get(ENTRIES).status_code == 200
    assert viewer.get(f"{VARIANTS}?entry={track.id}").status_code == 200
    assert viewer.get(SEARCH, {"q": "parcel"}).status_code == 200
    assert viewer.post(ENTRIES, {"question": "q", "answer": "a"}, format="json").status_code == 403
    assert viewer.patch(f"{ENTRIES}{track.id}/", {"answer": "x"}, format="json").status_code == 403
    assert viewer.delete(f"{ENTRIES}{track.id}/").status_code == 403
    assert viewer.post(VARIANTS, {"entry": track.id, "text": "new"}, format="json").status_code == 403
    assert viewer.post(IMPORT, {"file": upload("faq.json", "[]")}, format="multipart").status_code == 403
    assert Entry.objects.count() == 4 and track.variants.count() == 4


@pytest.mark.parametrize("who", ["kb editor (group)", "superuser"])
def test_kb_editors_and_superusers_can_do_everything(who):
    client = make_user("editor", group=EDITORS_GROUP) if who.startswith("kb") else make_user("root", superuser=True)
    created = client.post(ENTRIES, {"question": "Do you ship to Canada?", "answer": "Yes."}, format="json")
    assert created.status_code == 201
    url = f"{ENTRIES}{body(created)['id']}/"
    assert client.get(url).status_code == 200
    assert client.patch(url, {"answer": "Yes, in 5-8 days."}, format="json").status_code == 200
    variant = client.post(VARIANTS, {"entry": body(created)["id"], "text": "ship to canada"}, format="json")
    assert variant.status_code == 201
    assert (
        client.patch(f"{VARIANTS}{body(variant)['id']}/", {"text": "shipping to canada"}, format="json").status_code
        == 200
    )
    assert client.delete(f"{VARIANTS}{body(variant)['id']}/").status_code == 204
    assert client.get(SEARCH, {"q": "ship to canada"}).status_code == 200
    imported = client.post(
        IMPORT, {"file": upload("faq.json", '[{"question": "q?", "answer": "a"}]')}, format="multipart"
    )
    assert body(imported) == {"created": 1, "updated": 0, "dry_run": False, "warnings": 0}
    assert client.delete(url).status_code == 204
    assert list(Entry.objects.values_list("question", flat=True)) == ["q?"]


def test_token_auth_for_a_kb_editor():
    editor = get_user_model().objects.create_user("tokened", "t@example.com", "pw-12345678")
    editor.groups.add(Group.objects.get(name=EDITORS_GROUP))
    token = Token.objects.create(user=editor)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    response = client.post(ENTRIES, {"question": "Do you ship to Canada?", "answer": "Yes."}, format="json")
    assert response.status_code == 201
    entry = Entry.objects.get()
    assert entry.question == "Do you ship to Canada?"
    # The change history credits the token's user, as it credits admin users.
    assert entry.history.get().history_user == editor
    assert client.get(ENTRIES).json()["count"] == 1

    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    refused = client.get(ENTRIES)
    assert refused.status_code == 403 and body(refused) == {"detail": "Invalid token."}


def test_session_writes_need_the_csrf_token():
    user = get_user_model().objects.create_user("csrf", "c@example.com", "pw-12345678")
    user.groups.add(Group.objects.get(name=EDITORS_GROUP))
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post(ENTRIES, {"question": "q", "answer": "a"}, format="json")
    assert response.status_code == 403 and "CSRF" in body(response)["detail"]
    assert Entry.objects.count() == 0


# --- schema and docs --------------------------------------------------------------------------


def test_schema_describes_every_kb_endpoint():
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert {
        "/api/kb/entries/",
        "/api/kb/entries/{id}/",
        "/api/kb/variants/",
        "/api/kb/variants/{id}/",
        "/api/kb/search",
        "/api/kb/import",
    } <= set(schema["paths"])
    assert {"get", "post"} == set(schema["paths"]["/api/kb/entries/"])
    assert "multipart/form-data" in schema["paths"]["/api/kb/import"]["post"]["requestBody"]["content"]
    search_params = {p["name"] for p in schema["paths"]["/api/kb/search"]["get"]["parameters"]}
    assert search_params == {"q", "k"}
    entry_fields = set(schema["components"]["schemas"]["Entry"]["properties"])
    assert {"variants", "embedding", "question", "answer"} <= entry_fields


def test_docs_page_serves_swagger_ui_from_local_static_files():
    client = APIClient()
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html
    bundle = client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert bundle.status_code == 200

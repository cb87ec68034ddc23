"""Bad input in knowledge-base text and numbers (issue 10): NUL and other control characters, lone
surrogates, bidi overrides, zero-width characters, huge numbers and deep nesting, through the API
and the admin forms. Each gets a 400 (a form error in the admin) or is normalised, never a 500;
what is stored is what kb.text.text_clean leaves, whichever way it came in."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from kb.admin import NOTHING_LEFT
from kb.models import EDITORS_GROUP, Entry, Variant
from kb.text import text_clean
from tests.factories import entries_create
from tests.kb.test_admin import change_form, inline_management

pytestmark = pytest.mark.django_db

ENTRIES = "/api/kb/entries/"
VARIANTS = "/api/kb/variants/"

# Characters nobody means to type, which the knowledge base drops (kb.text.text_sanitise).
UNWANTED = {
    "bidi override": "\u202e",
    "zero-width space": "\u200b",
    "zero-width joiner": "\u200d",
    "byte order mark": "\ufeff",
    "escape": "\x1b",
    "bell": "\x07",
    "delete": "\x7f",
    "C1 control": "\x85",
}


@pytest.fixture
def editor():
    """An API client logged in as a KB editor (the group's permissions, not a superuser)."""
    user = get_user_model().objects.create_user("editor", "editor@example.com", "pw-12345678")
    user.groups.add(Group.objects.get(name=EDITORS_GROUP))
    client = APIClient()
    client.force_login(user)
    client.raise_request_exception = False  # a 500 must show as a 500 here, not as an exception
    return client


def post_json(client, url, raw: str, method="post"):
    """Send ``raw`` as the JSON body, so it can hold escapes (a lone surrogate) that no UTF-8 text can."""
    return getattr(client, method)(url, data=raw, content_type="application/json")


def test_text_clean_is_the_one_rule():
    assert text_clean(" Do you\u200b ship\u202e to\x1b  Canada?\u2066 ") == "Do you ship to Canada?"
    assert text_clean("Line one\r\n\x07line two\ud800 ", multiline=True) == "Line one\nline two"
    assert text_clean("\u200b\u202e\x01") == "" and text_clean(None) == ""


# --- API: text ---------------------------------------------------------------------------------


@pytest.mark.parametrize("char", list(UNWANTED.values()), ids=list(UNWANTED))
def test_unwanted_characters_in_entry_fields_are_dropped(editor, char):
    payload = {
        "question": f"Do you{char} ship to Canada?",
        "answer": f"Yes,{char} in 5-8 business days.\nTracking{char} included.",
        "category": f"ship{char}ping",
        "variants": [f"ship{char}ping to canada"],
    }
    response = editor.post(ENTRIES, payload, format="json")
    assert response.status_code == 201, response.content
    entry = Entry.objects.get()
    assert entry.question == "Do you ship to Canada?"
    assert entry.answer == "Yes, in 5-8 business days.\nTracking included."  # newlines are kept
    assert entry.category == "shipping"
    assert sorted(entry.variants.values_list("text", flat=True)) == ["Do you ship to Canada?", "shipping to canada"]
    assert response.json()["question"] == "Do you ship to Canada?"


def test_unwanted_characters_are_dropped_on_update_and_from_phrasings(editor):
    entry = entries_create()[0]
    response = post_json(editor, f"{ENTRIES}{entry.id}/", '{"answer": "Open\\u202e Orders.\\u0001"}', method="patch")
    assert response.status_code == 200, response.content
    entry.refresh_from_db()
    assert entry.answer == "Open Orders."
    added = editor.post(VARIANTS, {"entry": entry.id, "text": "where\u200b is\u2067 it"}, format="json")
    assert added.status_code == 201 and added.json()["text"] == "where is it"
    edited = editor.patch(f"{VARIANTS}{added.json()['id']}/", {"text": "\ufeffwhere is\x1b it now"}, format="json")
    assert edited.status_code == 200 and Variant.objects.get(id=added.json()["id"]).text == "where is it now"


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ('{"question": "a\\u0000b", "answer": "a"}', "question", "Null characters are not allowed"),
        ('{"question": "q", "answer": "a\\u0000"}', "answer", "Null characters are not allowed"),
        ('{"question": "q", "answer": "a", "category": "\\u0000"}', "category", "Null characters are not allowed"),
        ('{"question": "a\\ud800b", "answer": "a"}', "question", "Surrogate characters are not allowed"),
        ('{"question": "q", "answer": "\\udfff"}', "answer", "Surrogate characters are not allowed"),
        ('{"question": "q", "answer": "a", "variants": ["ok", "\\ud83d"]}', "variants", "Surrogate characters"),
    ],
)
def test_nul_and_lone_surrogates_are_a_400_with_a_field_error(editor, raw, field, message):
    response = post_json(editor, ENTRIES, raw)
    assert response.status_code == 400
    assert message in json.dumps(response.json()[field])
    assert Entry.objects.count() == 0


def test_nul_and_lone_surrogates_in_a_phrasing_are_a_400(editor):
    entry = entries_create()[0]
    for escape in ("\\u0000", "\\udc00"):
        response = post_json(editor, VARIANTS, f'{{"entry": {entry.id}, "text": "where{escape}"}}')
        assert response.status_code == 400 and "text" in response.json()
    assert entry.variants.count() == 4


def test_a_text_of_invisible_characters_only_is_empty(editor):
    invisible = "\u200b\u202e\x01\ufeff"
    response = editor.post(ENTRIES, {"question": invisible, "answer": "a"}, format="json")
    assert response.status_code == 400 and response.json() == {"detail": "question is empty"}
    response = editor.post(ENTRIES, {"question": "q", "answer": invisible}, format="json")
    assert response.status_code == 400 and response.json() == {"detail": "answer is empty"}
    entry = entries_create()[0]
    response = editor.post(VARIANTS, {"entry": entry.id, "text": invisible}, format="json")
    assert response.status_code == 400 and "text" in response.json()
    assert Entry.objects.count() == 4 and entry.variants.count() == 4


def test_a_phrasing_equal_to_another_once_cleaned_is_a_duplicate(editor):
    entry = entries_create()[0]
    response = editor.post(VARIANTS, {"entry": entry.id, "text": "track my\u200b parcel"}, format="json")
    assert response.status_code == 400
    assert "already has the phrasing 'track my parcel'" in response.json()["detail"]


# --- API: numbers and nesting ----------------------------------------------------------------


@pytest.mark.parametrize("raw", ["1e400", "-1e400", "1.5", "1e2", "true"])
def test_a_phrasing_entry_id_that_is_not_an_integer_is_a_400(editor, raw):
    # 1e400 decodes to infinity, which overflowed in the query (a 500); 1.5 was truncated to 1.
    entries_create()
    response = post_json(editor, VARIANTS, f'{{"entry": {raw}, "text": "where is it"}}')
    assert response.status_code == 400
    assert "Incorrect type" in response.json()["entry"][0]
    assert not Variant.objects.filter(text="where is it").exists()


@pytest.mark.parametrize("number", ["99999999999999999999", "-99999999999999999999", "9223372036854775808"])
def test_huge_integers_are_a_400_or_a_404(editor, number):
    entry = entries_create()[0]
    created = post_json(editor, VARIANTS, f'{{"entry": {number}, "text": "where is it"}}')
    assert created.status_code == 400 and "does not exist" in created.json()["entry"][0]
    moved = post_json(editor, f"{VARIANTS}{entry.variants.last().id}/", f'{{"entry": {number}}}', method="patch")
    assert moved.status_code == 400 and "entry" in moved.json()
    assert editor.get(f"{VARIANTS}?entry={number}").status_code == 400
    assert editor.get(f"{ENTRIES}{number.lstrip('-')}/").status_code == 404
    assert editor.get(f"{ENTRIES}?page={number}").status_code == 404
    assert editor.get("/api/kb/search", {"q": "hello", "k": number}).status_code == 400


def test_json_nested_too_deeply_is_a_400(editor):
    # Past Python's recursion limit the decoder raised RecursionError, which DRF let through (a 500).
    response = post_json(editor, ENTRIES, "[" * 100_000)
    assert response.status_code == 400 and "nested too deeply" in response.json()["detail"]
    nested = post_json(editor, ENTRIES, '{"question": ' + "[" * 500 + "]" * 500 + ', "answer": "a"}')
    assert nested.status_code == 400 and "question" in nested.json()
    assert Entry.objects.count() == 0


def test_search_reads_the_question_as_live_chat_does(editor):
    response = editor.get("/api/kb/search", {"q": "\u202e\u200b\x01"})
    assert response.status_code == 400 and "q" in response.json()
    response = editor.get("/api/kb/search", {"q": "hello\u202e\x1b there"})
    assert response.status_code == 200 and response.json()["query"] == "hello there"


# --- admin forms ------------------------------------------------------------------------------


def add_form(**fields):
    return {
        "question": "Do you ship to Canada?",
        "answer": "Yes, in 5-8 business days.",
        "category": "shipping",
        "language": "en",
        "is_published": "on",
        **inline_management(total=1),
        "variants-0-text": "",
        **fields,
    }


def test_admin_drops_unwanted_characters_from_entries_and_phrasings(editor_client):
    data = add_form(
        question="Do you\u200b ship\u202e to Canada?\x1b",
        answer="Yes,\u2066 in 5-8 days.\r\nTracking included.",
        category="ship\ufeffping",
        **{"variants-0-text": "deliver\u200d to\x07 Toronto"},
    )
    response = editor_client.post("/admin/kb/entry/add/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = Entry.objects.get()
    assert (entry.question, entry.answer, entry.category) == (
        "Do you ship to Canada?",
        "Yes, in 5-8 days.\nTracking included.",
        "shipping",
    )
    assert sorted(entry.variants.values_list("text", flat=True)) == ["Do you ship to Canada?", "deliver to Toronto"]


@pytest.mark.parametrize("field", ["question", "answer", "variants-0-text"])
def test_admin_refuses_a_text_of_invisible_characters_with_a_form_error(editor_client, field):
    # The form used to accept it and the services then refused it mid-save: a 500.
    response = editor_client.post("/admin/kb/entry/add/", add_form(**{field: "\u200b\u202e"}))
    assert response.status_code == 200
    assert NOTHING_LEFT in response.content.decode()
    assert Entry.objects.count() == 0


def test_admin_refuses_nul_with_a_form_error(editor_client):
    response = editor_client.post("/admin/kb/entry/add/", add_form(question="Do you\x00 ship?"))
    assert response.status_code == 200 and "Null characters are not allowed" in response.content.decode()
    assert Entry.objects.count() == 0


def test_admin_sees_phrasings_equal_once_cleaned_as_duplicates(editor_client):
    # Saved one by one they broke the unique (entry, text) rule mid-save: a 500.
    entry = entries_create()[0]
    data = change_form(entry, new=["parcel\u200b status", "parcel status"])
    response = editor_client.post(f"/admin/kb/entry/{entry.id}/change/", data)
    assert response.status_code == 200 and "Please correct the duplicate data for text" in response.content.decode()
    assert entry.variants.count() == 4

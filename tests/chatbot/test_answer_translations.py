"""Answers per language on one entry (issue 14): a question asked in Chinese gets the entry's
Chinese answer when it has one (the pipeline; a "did you mean" choice and the LLM's grounding read
it the same way); editors set it on the entry page, with a preview as the customer sees it, and in
the API; it is screened like the answer."""

import pytest

from chatbot.pipeline import answer_question
from kb import services
from kb.models import Entry
from tests.factories import entries_create, kb_embed_and_publish
from tests.kb.test_admin import change_form
from tests.kb.test_api import ENTRIES, body, make_user

pytestmark = pytest.mark.django_db

TRACK_ZH = "在“账户 > 订单”里点**跟踪包裹**。"


def test_a_chinese_question_gets_the_chinese_answer_and_an_english_one_the_english():
    track = entries_create()[0]
    services.entry_update(entry=track, translations={"zh": TRACK_ZH}, variants=[*_phrasings(track), "我的包裹在哪里"])
    kb_embed_and_publish()
    chinese = answer_question("我的包裹在哪里")
    assert (chinese.kind, chinese.language, chinese.entry_id) == ("faq", "zh", track.id)
    assert chinese.text == TRACK_ZH
    english = answer_question("Where is my package?")
    assert english.entry_id == track.id and english.text == track.answer
    # An entry without a Chinese answer answers Chinese questions with the one it has.
    services.entry_update(entry=track, translations={})
    assert answer_question("我的包裹在哪里").text == track.answer


def _phrasings(entry):
    return list(entry.variants.filter(is_primary=False).values_list("text", flat=True))


def test_translations_are_checked_cleaned_and_screened():
    track = entries_create()[0]
    with pytest.raises(services.EntryInvalid, match="unknown language 'fr'"):
        services.entry_update(entry=track, translations={"fr": "Suivez votre colis."})
    with pytest.raises(services.EntryInvalid, match="must be an object"):
        services.entry_update(entry=track, translations=["zh"])
    # The entry's own language is not a translation; empty ones are dropped; text cleaned.
    services.entry_update(entry=track, translations={"en": "x", "zh": " 请看\u200b订单。 "})
    track.refresh_from_db()
    assert track.translations == {"zh": "请看订单。"}
    # A Chinese answer with contact details not on the allow-list holds the entry, as the answer would.
    services.entry_update(entry=track, translations={"zh": "请发邮件到 refunds@scam.example"})
    track.refresh_from_db()
    assert not track.is_published and "refunds@scam.example" in track.held_reason
    # Switching the entry to Chinese drops a Chinese "translation": it would shadow its own answer.
    services.entry_update(entry=track, translations={"zh": "请看订单。"})
    services.entry_update(entry=track, language="zh", answer="请看订单页面。")
    track.refresh_from_db()
    assert track.translations == {} and track.answer_for("zh") == "请看订单页面。"


def test_the_api_reads_and_writes_translations():
    editor = make_user("editor", group="KB editors")
    track = entries_create()[0]
    response = editor.patch(f"{ENTRIES}{track.id}/", {"translations": {"zh": TRACK_ZH}}, format="json")
    assert response.status_code == 200, body(response)
    assert body(response)["translations"] == {"zh": TRACK_ZH}
    assert Entry.objects.get(pk=track.pk).translations == {"zh": TRACK_ZH}
    refused = editor.patch(f"{ENTRIES}{track.id}/", {"translations": {"xx": "?"}}, format="json")
    assert refused.status_code == 400 and "unknown language 'xx'" in body(refused)["detail"]


def test_the_entry_page_edits_the_other_languages_answer_and_previews_both(editor_client):
    track = entries_create()[0]
    page = editor_client.get(f"/admin/kb/entry/{track.id}/change/").content.decode()
    assert 'name="translated_answer"' in page and 'id="answer-preview-module"' in page
    assert "chatbot/widget/markdown.js" in page and "chatbot/admin/entry_preview.js" in page
    data = {**change_form(track), "translated_answer": TRACK_ZH}
    assert editor_client.post(f"/admin/kb/entry/{track.id}/change/", data).status_code == 302
    track.refresh_from_db()
    assert track.translations == {"zh": TRACK_ZH}
    page = editor_client.get(f"/admin/kb/entry/{track.id}/change/").content.decode()
    assert "跟踪包裹" in page.split('name="translated_answer"')[1].split("</textarea>")[0]
    # Emptied: the entry answers every language with its answer again.
    editor_client.post(f"/admin/kb/entry/{track.id}/change/", {**data, "translated_answer": ""})
    track.refresh_from_db()
    assert track.translations == {}

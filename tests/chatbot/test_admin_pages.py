"""Admin pages of the chat app that must not offer what makes no sense: conversations and their
messages come from the chat (a transcript is read-only), and thresholds exist per detected language."""

from __future__ import annotations

import pytest

from chatbot.models import Conversation, DecisionThresholds, Message

pytestmark = pytest.mark.django_db


def test_conversations_are_not_added_in_the_admin_and_transcripts_take_no_messages(editor_client):
    assert editor_client.get("/admin/chatbot/conversation/add/").status_code == 403
    listing = editor_client.get("/admin/chatbot/conversation/").content.decode()
    assert "/admin/chatbot/conversation/add/" not in listing
    conversation = Conversation.objects.create()  # the default site
    Message.objects.create(conversation=conversation, role="customer", text="hello", client_id="c-1")
    page = editor_client.get(f"/admin/chatbot/conversation/{conversation.pk}/change/").content.decode()
    # No row can be added (the admin's script shows "Add another Message" only below the maximum).
    assert "hello" in page and 'name="messages-MAX_NUM_FORMS" value="0"' in page
    before = Conversation.objects.count()
    editor_client.post("/admin/chatbot/conversation/add/", {})
    assert Conversation.objects.count() == before


def test_thresholds_are_for_a_language_the_bot_detects(editor_client):
    values = {"answer_threshold": "0.6", "clarify_threshold": "0.5", "clarify_margin": "0.05", "max_suggestions": "3"}
    response = editor_client.post("/admin/chatbot/decisionthresholds/add/", {"language": "english", **values})
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not DecisionThresholds.objects.filter(language="english").exists()
    editor_client.post("/admin/chatbot/decisionthresholds/add/", {"language": "zh", **values})
    assert DecisionThresholds.objects.filter(language="zh").exists()

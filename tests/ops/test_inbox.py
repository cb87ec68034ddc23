"""The agent inbox's pages and what the live hand-off adds to transcripts (issue 15): who may open
the inbox, its conversation view with the bot's reasoning, canned replies from the FAQ, and the agent
filter, export columns and agent first-response time."""

import csv
import io
import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from chatbot import handoff
from chatbot.models import Conversation, ConversationState, Message
from ops.inbox import inbox_for
from ops.metrics import dashboard
from ops.selectors import TranscriptFilter, conversations_filtered
from tests.factories import entries_create, kb_embed_and_publish
from tests.ops.test_transcripts import exchange, user

pytestmark = pytest.mark.django_db


@pytest.fixture
def held():
    """A conversation Alice took 90 s after the customer asked for a person, and answered 30 s later."""
    entries = entries_create()
    alice = user("alice", group="Agents")
    alice.first_name = "Alice"
    alice.save()
    conversation = Conversation.objects.create(
        state=ConversationState.WAITING, handoff_requested_at=timezone.now() - timedelta(minutes=2)
    )
    exchange(conversation, "where is my parcel?", source="faq", entry=entries[0], ago_minutes=3)
    exchange(conversation, "a person please", source="handoff", decision={"handoff": "requested"}, ago_minutes=2)
    handoff.conversation_take(conversation_id=conversation.pk, agent=alice)
    sent = handoff.agent_message_save(
        conversation_id=conversation.pk, agent=alice, client_id="a1", text="Hi, Alice here"
    )
    Message.objects.filter(pk=sent.message.pk).update(
        created_at=conversation.handoff_requested_at + timedelta(seconds=120)
    )
    return conversation, alice


def test_only_agents_open_the_inbox(client, held):
    _conversation, alice = held
    assert client.get("/ops/inbox/").status_code == 302  # to sign in
    reviewer = user("reviewer", group="Ops reviewers")
    client.force_login(reviewer)
    assert client.get("/ops/inbox/").status_code == 403
    assert client.get("/ops/inbox/replies.json?q=parcel").status_code == 403
    client.force_login(alice)
    page = client.get("/ops/inbox/")
    assert page.status_code == 200 and b"/static/ops/inbox.js" in page.content


def test_the_inbox_lists_waiting_and_held_conversations(held):
    conversation, alice = held
    bob = user("bob", group="Agents")
    waiting = Conversation.objects.create(state=ConversationState.WAITING, handoff_requested_at=timezone.now())
    Message.objects.create(conversation=waiting, role="customer", text="anyone there?", client_id="w1")
    Conversation.objects.create()  # with the bot: not in the inbox
    assert [(row["id"], row["last_text"]) for row in inbox_for(agent=alice)["waiting"]] == [
        (str(waiting.pk), "anyone there?")
    ]
    assert [row["id"] for row in inbox_for(agent=alice)["mine"]] == [str(conversation.pk)]
    others = inbox_for(agent=bob)["others"]
    assert [(row["id"], row["agent"]) for row in others] == [(str(conversation.pk), "Alice")]


def test_the_conversation_view_holds_turns_traces_and_steps(client, held):
    conversation, alice = held
    client.force_login(alice)
    data = client.get(f"/ops/inbox/{conversation.pk}.json").json()
    assert [m["role"] for m in data["messages"]] == ["customer", "bot", "customer", "bot", "agent"]
    assert data["messages"][1]["trace"]["kind"] == "faq"
    assert data["messages"][4]["agent"] == "Alice"
    assert [event["kind"] for event in data["events"]] == ["joined"]
    assert (data["state"], data["agent"]) == ("agent", "Alice")
    assert client.get("/ops/inbox/00000000-0000-0000-0000-000000000000.json").status_code == 404


def test_canned_replies_come_from_the_faq(client, held):
    kb_embed_and_publish()
    _conversation, alice = held
    alice.user_permissions.add(Permission.objects.get(codename="view_entry"))
    client.force_login(alice)
    found = client.get("/ops/inbox/replies.json", {"q": "where is my package"}).json()["entries"]
    assert found[0]["question"] == "How do I track my order?" and found[0]["answer"]
    assert client.get("/ops/inbox/replies.json", {"q": "  "}).json() == {"entries": []}


def test_transcripts_filter_by_agent_and_export_the_agents_figures(admin_client, held):
    conversation, alice = held
    Conversation.objects.create()
    assert [c.pk for c in conversations_filtered(TranscriptFilter(agent_id=alice.pk))] == [conversation.pk]
    listed = admin_client.get("/ops/", {"agent": alice.pk})
    assert listed.status_code == 200 and b"1 conversation." in listed.content
    rows = list(
        csv.DictReader(io.StringIO(b"".join(admin_client.get("/ops/export.csv").streaming_content).decode("utf-8-sig")))
    )
    mine = next(row for row in rows if row["conversation_id"] == str(conversation.pk))
    assert (mine["agent"], mine["agent_first_response_ms"]) == ("Alice", "120000")
    lines = b"".join(admin_client.get("/ops/export.jsonl", {"agent": alice.pk}).streaming_content).splitlines()
    assert [json.loads(line)["agent"] for line in lines][-1] == "Alice"


def test_the_dashboard_reports_the_agents_first_response_and_their_replies(held):
    today = timezone.localdate()
    figures = dashboard(today - timedelta(days=1), today)
    assert figures.agent_first_response_ms == {"p50": 120000.0, "p95": 120000.0}
    assert figures.answered_by["a person"] == 1


def test_the_transcript_shows_the_agent_and_the_hand_off_steps(admin_client, held):
    conversation, _alice = held
    page = admin_client.get(f"/ops/conversations/{conversation.pk}/").content.decode()
    assert "agent Alice (first reply after 120000 ms)" in page
    assert "Hand-off: Agent joined (Alice)" in page
    assert "Agent Alice" in page and "Hi, Alice here" in page

"""The ops console's transcripts (issue 15): who may read them, the filters, a conversation's turns
with their traces drawn for people, and the exports."""

import csv
import io
import json
import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Value
from django.db.models.functions import Greatest
from django.utils import timezone
from django.utils.html import escape

from chatbot.models import Conversation, ConversationState, Feedback, Message, PromptText, Site
from chatbot.pipeline import answer_question
from chatbot.services import BotReply, exchange_save, outcome_of_reply
from ops.selectors import TranscriptFilter, conversations_filtered
from tests.factories import entries_create, kb_embed_and_publish

pytestmark = pytest.mark.django_db

PAGES = ["/ops/", "/ops/export.csv", "/ops/export.jsonl"]
PROMPT = "You answer customers of the shop from these entries only."


def user(name, *, staff=True, group=None, superuser=False):
    User = get_user_model()
    if superuser:
        return User.objects.create_superuser(name, f"{name}@example.com", "pw-12345678")
    account = User.objects.create_user(name, f"{name}@example.com", "pw-12345678", is_staff=staff)
    if group:
        account.groups.add(Group.objects.get(name=group))
    return account


def exchange(conversation, question, *, source, text="…", decision=None, entry=None, ago_minutes=0, feedback=None):
    """A customer's message and the bot's reply as exchange_save stores them, with a hand-written record."""
    at = timezone.now() - timedelta(minutes=ago_minutes)
    asked = Message.objects.create(conversation=conversation, role="customer", text=question)
    reply = Message.objects.create(
        conversation=conversation,
        role="bot",
        text=text,
        source=source,
        entry=entry,
        reply_to=asked,
        decision={"kind": source, "reason": "test", "language": "en", **(decision or {})},
    )
    Message.objects.filter(pk=asked.pk).update(created_at=at)
    Message.objects.filter(pk=reply.pk).update(created_at=at + timedelta(milliseconds=240))
    if feedback:
        Feedback.objects.create(message=reply, value=feedback, reason="wrong" if feedback == "down" else "")
    # As exchange_save keeps it.
    outcome = outcome_of_reply(source, (decision or {}).get("handoff"))
    Conversation.objects.filter(pk=conversation.pk).update(outcome=Greatest("outcome", Value(outcome)))
    return reply


def bot_reply(answer):
    """What live chat stores for a pipeline answer that needs no LLM."""
    return BotReply(
        source=answer.source, text=answer.text, record=answer.decision, entry_id=answer.entry_id, score=answer.score
    )


@pytest.fixture
def shop():
    """Five conversations, one of each outcome."""
    entries = entries_create()
    partner = Site.objects.create(name="Partner shop")
    made = {}
    made["faq"] = Conversation.objects.create(rating=5)
    exchange(made["faq"], "where is my parcel?", source="faq", entry=entries[0], feedback="up")
    made["llm"] = Conversation.objects.create(site=partner)
    exchange(made["llm"], "能用支付宝吗？", source="llm", decision={"language": "zh", "llm": {"status": "answered"}})
    made["unanswered"] = Conversation.objects.create()
    exchange(
        made["unanswered"],
        "do you sell garden furniture",
        source="handoff",
        decision={"handoff": "offered"},
        feedback="down",
    )
    made["handed_off"] = Conversation.objects.create(state=ConversationState.WAITING)
    exchange(
        made["handed_off"], "I want a refund, a person please", source="handoff", decision={"handoff": "requested"}
    )
    made["none"] = Conversation.objects.create()
    Conversation.objects.filter(pk=made["none"].pk).update(created_at=timezone.now() - timedelta(days=10))
    return made, entries, partner


def test_only_staff_holding_the_transcripts_permission_get_in(client, shop):
    conversation = shop[0]["faq"]
    pages = [*PAGES, f"/ops/conversations/{conversation.pk}/"]
    for page in pages:
        response = client.get(page)  # anonymous: to the sign-in page
        assert response.status_code == 302 and response.url.startswith("/admin/login/?next="), page
    cases = {
        "superuser": (user("root", superuser=True), 200),
        "ops reviewer": (user("ops", group="Ops reviewers"), 200),
        "agent": (user("agent", group="Agents"), 200),
        "kb editor": (user("editor", group="KB editors"), 200),
        "staff without a role": (user("staff"), 403),
        "customer account in the ops group": (user("customer", staff=False, group="Ops reviewers"), 403),
    }
    for name, (account, status) in cases.items():
        client.force_login(account)
        for page in pages:
            assert client.get(page).status_code == status, (name, page)


def test_filters_narrow_the_conversations(shop):
    made, _entries, partner = shop

    def found(**spec):
        return {c.pk for c in conversations_filtered(TranscriptFilter(**spec))}

    ids = {name: conversation.pk for name, conversation in made.items()}
    assert found() == set(ids.values())
    for outcome, name in [
        ("faq", "faq"),
        ("llm", "llm"),
        ("unanswered", "unanswered"),
        ("handed_off", "handed_off"),
        ("none", "none"),
    ]:
        assert found(outcome=outcome) == {ids[name]}, outcome
    assert found(thumbs="down") == {ids["unanswered"]} and found(thumbs="any") == {ids["faq"], ids["unanswered"]}
    assert found(rating=5) == {ids["faq"]} and found(language="zh") == {ids["llm"]}
    assert found(site_id=partner.pk) == {ids["llm"]} and found(text="REFUND") == {ids["handed_off"]}
    today = timezone.localdate()
    assert ids["none"] not in found(since=today - timedelta(days=1))
    assert found(until=today - timedelta(days=5)) == {ids["none"]}


def test_the_list_shows_outcomes_and_links_the_filtered_exports(admin_client, shop):
    page = admin_client.get("/ops/?outcome=unanswered&thumbs=down").content.decode()
    assert "1 conversation." in page and "outcome-unanswered" in page and "0 / 1" in page
    assert 'href="/ops/export.csv?outcome=unanswered&amp;thumbs=down"' in page
    everything = admin_client.get("/ops/").content.decode()
    assert "5 conversations." in everything and "240 ms" in everything  # first response time
    bad = admin_client.get("/ops/?since=yesterday&rating=9")
    assert bad.status_code == 200  # an invalid filter is left out, not a 500


def test_a_conversation_shows_each_turn_with_its_trace(admin_client):
    track = entries_create()[0]
    kb_embed_and_publish()
    conversation = Conversation.objects.create()
    stored = exchange_save(
        conversation=conversation,
        client_id="c1",
        customer_text="track my parcel",
        reply=bot_reply(answer_question("track my parcel")),
    )
    PromptText.objects.create(sha256="a" * 64, text=PROMPT)
    exchange(
        conversation,
        "can I pay in bitcoin?",
        source="llm",
        text="No, only cards.",
        decision={
            "llm": {
                "status": "answered",
                "model": "gemma",
                "attempts": 1,
                "error": "",
                "prompt": [{"role": "system", "sha256": "a" * 64}],
            }
        },
    )
    page = admin_client.get(f"/ops/conversations/{conversation.pk}/").content.decode()
    hit = page.split('class="trace-hit"')[1].split("</tr>")[0]
    assert f"#{track.id} How do I track my order?" in hit and "“track my parcel”" in hit and "answered" in hit
    answer = stored.message.decision["thresholds"]["answer"]  # the thresholds in force then
    assert f"≥ answer {answer:.3f}" in hit and f'class="mark answer" style="left:{answer * 100:.1f}%"' in hit
    assert escape(stored.message.text) in page and "best score reaches the answer threshold" in page
    assert "embed" in page.split('class="timings"')[1]  # each step's time
    # Stored with its question, the reply's own time to answer is the first response time.
    shown = float(re.search(r"first response (\d+) ms", page).group(1))
    assert abs(shown - stored.message.timings_ms["total"]) <= 1
    assert "gemma: answered" in page and PROMPT in page  # the LLM's context, from its stored text


def test_exports_hold_the_filtered_set(admin_client, shop):
    made, _entries, _partner = shop
    response = admin_client.get("/ops/export.csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode("utf-8-sig"))))
    by_id = {row["conversation_id"]: row for row in rows}
    assert len(rows) == 5 and response["Content-Disposition"] == 'attachment; filename="transcripts.csv"'
    faq = by_id[str(made["faq"].pk)]
    assert (faq["outcome"], faq["rating"], faq["thumbs_up"], faq["first_response_ms"]) == ("faq", "5", "1", "240")
    assert by_id[str(made["llm"].pk)]["language"] == "zh" and by_id[str(made["none"].pk)]["outcome"] == "none"

    response = admin_client.get("/ops/export.jsonl?outcome=unanswered")
    lines = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    assert [line["role"] for line in lines] == ["customer", "bot"]
    assert lines[1]["decision"]["handoff"] == "offered" and lines[1]["feedback"] == {"value": "down", "reason": "wrong"}
    assert {line["conversation_id"] for line in lines} == {str(made["unanswered"].pk)}

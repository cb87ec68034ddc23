"""Fixing the knowledge base from the log (issue 15): from a bot turn an editor adds the
customer's question as a phrasing of the right entry (found by search-as-you-type), or starts a new
entry with it, and a reviewer marks the reply right or wrong; the fix goes through the embedding
pipeline and the same question is then answered right."""

import re

import pytest
from django.contrib.auth.models import Group

from chatbot.models import Conversation
from chatbot.pipeline import answer_question
from chatbot.services import exchange_save
from ops.models import AnswerReview
from tests.factories import entries_create, kb_embed_and_publish
from tests.ops.test_transcripts import bot_reply, user

pytestmark = pytest.mark.django_db

QUESTION = "marmalade courier lighthouse"


@pytest.fixture
def missed():
    """A question the knowledge base had no answer for, as live chat stored it."""
    entries = entries_create()
    kb_embed_and_publish()
    answer = answer_question(QUESTION)
    assert answer.source != "faq"
    conversation = Conversation.objects.create()
    stored = exchange_save(conversation=conversation, client_id="c1", customer_text=QUESTION, reply=bot_reply(answer))
    return entries[0], conversation, stored.message


def fix_url(conversation, message):
    return f"/ops/conversations/{conversation.pk}/messages/{message.pk}/fix"


def test_the_question_becomes_a_phrasing_and_is_then_answered_right(client, missed):
    track, conversation, reply = missed
    client.force_login(user("editor", group="KB editors"))
    page = client.get(f"/ops/conversations/{conversation.pk}/").content.decode()
    assert f'action="{fix_url(conversation, reply)}"' in page and "data-entry-search" in page
    found = client.get("/ops/entries.json?q=parcel").json()["entries"]
    assert found[0] == {"id": track.id, "question": track.question, "category": "orders"}
    assert client.get(f"/ops/entries.json?q=%23{track.id}").json()["entries"][0]["id"] == track.id

    response = client.post(
        fix_url(conversation, reply), {"action": "phrasing", "entry": f"#{track.id} {track.question}"}
    )
    assert response.status_code == 302 and response.url.endswith(f"#m{reply.pk}")
    assert track.variants.filter(text=QUESTION, is_dirty=True).exists()
    kb_embed_and_publish()  # the worker's part
    again = answer_question(QUESTION)
    assert (again.source, again.entry_id, again.text) == ("faq", track.id, track.answer)
    # Twice: refused with the reason, nothing doubled.
    page = client.post(fix_url(conversation, reply), {"action": "phrasing", "entry": f"#{track.id}"}, follow=True)
    assert "already has the phrasing" in page.content.decode()
    page = client.post(fix_url(conversation, reply), {"action": "phrasing", "entry": "track"}, follow=True)
    assert "choose an entry from the list" in page.content.decode()


def test_a_new_entry_starts_from_the_question(client, missed):
    _track, conversation, _reply = missed
    client.force_login(user("editor", group="KB editors"))
    page = client.get(f"/ops/conversations/{conversation.pk}/").content.decode()
    link = "/admin/kb/entry/add/?question=marmalade%20courier%20lighthouse"
    assert link in page
    form = client.get(link).content.decode()
    field = re.search(r'<input[^>]*name="question"[^>]*>', form).group(0)
    assert f'value="{QUESTION}"' in field


def test_reviewers_mark_replies_and_agents_may_only_read(client, missed):
    _track, conversation, reply = missed
    client.force_login(user("ops", group="Ops reviewers"))
    client.post(fix_url(conversation, reply), {"action": "wrong"})
    review = AnswerReview.objects.get(message=reply)
    assert review.verdict == "wrong" and review.reviewer.username == "ops"
    client.post(fix_url(conversation, reply), {"action": "right"})
    assert AnswerReview.objects.get(message=reply).verdict == "right"
    page = client.get(f"/ops/conversations/{conversation.pk}/").content.decode()
    assert "marked <b>right</b> by ops" in page
    assert "data-entry-search" not in page  # reviewers do not edit the knowledge base
    assert client.post(fix_url(conversation, reply), {"action": "phrasing", "entry": "#1"}).status_code == 403

    agent = user("agent", group="Agents")
    client.force_login(agent)
    page = client.get(f"/ops/conversations/{conversation.pk}/").content.decode()
    assert 'class="fix"' not in page
    assert client.post(fix_url(conversation, reply), {"action": "wrong"}).status_code == 403
    assert client.get("/ops/entries.json?q=parcel").status_code == 403
    assert Group.objects.get(name="Agents").permissions.filter(codename="add_answerreview").count() == 0

"""Per-entry hit counts (issue 14): each FAQ answer a customer received counts once for its entry,
counted in the background past a watermark; the entries list shows hits and last hit, sortable,
with a "never hit" filter."""

from datetime import timedelta

import pytest
from django.utils import timezone

from chatbot import entry_hits
from chatbot.entry_hits import entry_hits_refresh
from chatbot.models import Conversation, EntryHits, Message
from chatbot.tasks import entry_hits_count
from tests.factories import entries_create

pytestmark = pytest.mark.django_db


def answered(entry, *, ago_seconds=60, source="faq"):
    """A customer's question and the bot's reply from ``entry``, stored ``ago_seconds`` ago."""
    conversation = Conversation.objects.create()
    question = Message.objects.create(conversation=conversation, role="customer", text="?")
    reply = Message.objects.create(conversation=conversation, role="bot", text="!", source=source, entry=entry)
    at = timezone.now() - timedelta(seconds=ago_seconds)
    Message.objects.filter(pk__in=[question.pk, reply.pk]).update(created_at=at)
    return at


def test_faq_answers_are_counted_once_each_in_batches(monkeypatch):
    track, returns, payments, password = entries_create()
    for _ in range(3):
        answered(track)
    last = answered(returns, ago_seconds=30)
    answered(payments, source="clarify")  # a "did you mean" offer is no hit
    answered(password, ago_seconds=1)  # too fresh: a transaction with a lower id may still commit
    assert entry_hits_refresh(batch=4) == 4  # messages read
    assert entry_hits_refresh(batch=4) == 4
    assert entry_hits_refresh(batch=4) == 2
    assert entry_hits_refresh(batch=4) == 0
    hits = {row.entry_id: row for row in EntryHits.objects.all()}
    assert {entry_id: row.count for entry_id, row in hits.items()} == {track.id: 3, returns.id: 1}
    assert hits[returns.id].last_hit_at == last
    # Later answers add to the counts; the fresh one is counted once it has settled.
    monkeypatch.setattr(entry_hits, "SETTLE_SECONDS", 0)
    answered(track)
    entry_hits_count()  # the periodic task: until up to date
    counts = dict(EntryHits.objects.values_list("entry_id", "count"))
    assert counts == {track.id: 4, returns.id: 1, password.id: 1}


def test_the_entries_list_shows_hits_sorts_by_them_and_filters_the_never_hit(editor_client):
    track, returns, payments, password = entries_create()
    for _ in range(2):
        answered(track)
    answered(returns, ago_seconds=40 * 24 * 3600)
    entry_hits_refresh()
    page = editor_client.get("/admin/kb/entry/?o=-8").content.decode()  # hits, descending
    assert "column-hit_count" in page and "column-last_hit" in page
    rows = page.split("<tbody>")[1].split("</tbody>")[0].split("<tr")[1:]
    assert "How do I track my order?" in rows[0] and '<td class="field-hit_count">2</td>' in rows[0]
    assert "never" in page
    never = editor_client.get("/admin/kb/entry/?hits=never").content.decode()
    assert payments.question in never and password.question in never and track.question not in never
    stale = editor_client.get("/admin/kb/entry/?hits=stale").content.decode()
    assert returns.question in stale and track.question not in stale

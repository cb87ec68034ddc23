"""Transcript retention (issue 15): conversations untouched for longer than the setting are deleted
with their messages and feedback, in batches, by a periodic job; 0 keeps everything."""

from datetime import timedelta

import pytest
from django.utils import timezone

from chatbot.entry_hits import entry_hits_refresh
from chatbot.models import Conversation, EntryHits, Feedback, Message
from chatbot.retention import transcripts_prune, transcripts_prune_batch
from chatbot.tasks import transcripts_prune_old
from tests.chatbot.test_entry_hits import answered
from tests.factories import entries_create

pytestmark = pytest.mark.django_db


def aged(conversation, days):
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now() - timedelta(days=days))


def test_old_transcripts_go_in_batches_and_recent_ones_stay(settings):
    track = entries_create()[0]
    for _ in range(3):
        answered(track)
    old = list(Conversation.objects.all())
    for conversation in old:
        aged(conversation, 400)
    Feedback.objects.create(message=Message.objects.filter(role="bot").first(), value="down")
    entry_hits_refresh()
    recent = Conversation.objects.create()
    Message.objects.create(conversation=recent, role="customer", text="hello")

    settings.CHATBOT_TRANSCRIPT_RETENTION_DAYS = 0  # kept forever
    assert transcripts_prune() == 0 and Conversation.objects.count() == 4
    assert transcripts_prune_batch(days=365, batch=2) == 2  # one batch
    assert transcripts_prune(days=365, batch=2) == 1  # the rest
    assert list(Conversation.objects.all()) == [recent]
    assert list(Message.objects.values_list("text", flat=True)) == ["hello"] and not Feedback.objects.exists()
    assert EntryHits.objects.get(entry=track).count == 3  # the hit counts outlive the transcripts


def test_the_periodic_job_uses_the_setting(settings):
    kept, gone = Conversation.objects.create(), Conversation.objects.create()
    aged(kept, 20)
    aged(gone, 40)
    settings.CHATBOT_TRANSCRIPT_RETENTION_DAYS = 30
    assert transcripts_prune_old() == 1
    assert list(Conversation.objects.all()) == [kept]

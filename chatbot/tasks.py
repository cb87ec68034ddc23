"""Celery tasks of the chat side; each is a thin call into a service."""

from celery import shared_task

from chatbot import handoff
from chatbot.entry_hits import entry_hits_refresh
from chatbot.handoff_events import agents_away_announce_from_sync
from chatbot.retention import transcripts_prune


@shared_task(ignore_result=True)
def entry_hits_count():
    """Count the FAQ answers stored since the last run into the entries' hit counts."""
    # A backlog (the first run over a big transcript store) is worked off a batch at a time.
    while entry_hits_refresh():
        pass


@shared_task(ignore_result=True)
def transcripts_prune_old():
    """Delete the conversations past CHATBOT_TRANSCRIPT_RETENTION_DAYS, in batches."""
    return transcripts_prune()


@shared_task(ignore_result=True)
def agents_away_release():
    """Put the chats of agents whose console stayed away past the grace period back in the queue,
    and tell their customers and the inboxes."""
    released = handoff.agents_away_release()
    agents_away_announce_from_sync(released)
    return len(released)

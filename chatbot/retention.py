"""How long transcripts are kept: conversations untouched for longer than
CHATBOT_TRANSCRIPT_RETENTION_DAYS are deleted with their messages and feedback, a batch at a time
(a periodic Celery job), so a large backlog never holds long locks. The entries' hit counts stay."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from chatbot.models import Conversation

BATCH_CONVERSATIONS = 500


def transcripts_prune_batch(*, days: int | None = None, batch: int = BATCH_CONVERSATIONS) -> int:
    """Delete up to ``batch`` conversations last active more than ``days`` ago (default: the
    setting; 0 keeps everything); returns how many were deleted."""
    days = settings.CHATBOT_TRANSCRIPT_RETENTION_DAYS if days is None else days
    if days <= 0:
        return 0
    cutoff = timezone.now() - timedelta(days=days)
    with transaction.atomic():
        ids = list(
            Conversation.objects.filter(updated_at__lt=cutoff)
            .order_by("updated_at")
            .values_list("pk", flat=True)[:batch]
        )
        if ids:
            Conversation.objects.filter(pk__in=ids).delete()
    return len(ids)


def transcripts_prune(*, days: int | None = None, batch: int = BATCH_CONVERSATIONS) -> int:
    """Delete every conversation past the retention period, batch by batch; returns how many."""
    total = 0
    while deleted := transcripts_prune_batch(days=days, batch=batch):
        total += deleted
    return total

"""Per-entry hit counts for KB editors (the entries list's "hits" and "last hit" columns): each
FAQ answer a customer received counts once for its entry. Counted in the background from the
stored replies, a batch at a time past a watermark, so the answer path stays as it is."""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone

from chatbot.models import EntryHits, EntryHitsCounted, Message, Role, Source
from kb.models import Entry

# Messages younger than this are left for the next run: a reply's id is taken when it is
# inserted, and a transaction that commits later than one with a higher id must not be skipped.
SETTLE_SECONDS = 10
BATCH_MESSAGES = 50_000


def entry_hits_refresh(*, batch: int = BATCH_MESSAGES) -> int:
    """Count the FAQ answers among the next ``batch`` messages past the watermark into EntryHits;
    returns how many messages it read (0: up to date). One run at a time (the watermark row is
    locked)."""
    with transaction.atomic():
        EntryHitsCounted.objects.get_or_create(id=1)
        mark = EntryHitsCounted.objects.select_for_update().get(id=1)
        settled = timezone.now() - timedelta(seconds=SETTLE_SECONDS)
        window = Message.objects.filter(id__gt=mark.last_message_id, created_at__lt=settled).order_by("id")
        read = list(window.values_list("id", flat=True)[:batch])
        if not read:
            return 0
        last_id = read[-1]
        answers = Message.objects.filter(
            id__gt=mark.last_message_id, id__lte=last_id, role=Role.BOT, source=Source.FAQ, entry__isnull=False
        )
        counted = {
            row["entry_id"]: (row["n"], row["last"])
            for row in answers.values("entry_id").annotate(n=Count("id"), last=Max("created_at"))
        }
        # Entries deleted meanwhile have no row to count into.
        existing = set(Entry.objects.filter(id__in=counted).values_list("id", flat=True))
        stored = {row.entry_id: row for row in EntryHits.objects.select_for_update().filter(entry_id__in=existing)}
        changed, new = [], []
        for entry_id in existing:
            n, last = counted[entry_id]
            row = stored.get(entry_id)
            if row is None:
                new.append(EntryHits(entry_id=entry_id, count=n, last_hit_at=last))
            else:
                row.count += n
                row.last_hit_at = max(filter(None, [row.last_hit_at, last]))
                changed.append(row)
        EntryHits.objects.bulk_create(new)
        EntryHits.objects.bulk_update(changed, ["count", "last_hit_at"])
        mark.last_message_id = last_id
        mark.save(update_fields=["last_message_id"])
        return len(read)

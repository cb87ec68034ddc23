"""Celery tasks of the knowledge base: thin wrappers over kb.services."""

import logging

from celery import shared_task
from celery.signals import worker_ready
from django.db import InterfaceError, OperationalError

from kb import services

logger = logging.getLogger(__name__)


@shared_task(
    bind=True,
    acks_late=True,
    # Only what a retry can fix: the database restarting or a dropped connection. Model errors are
    # recorded on the rows by the service instead.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=5,
    soft_time_limit=300,
    time_limit=360,
)
def kb_refresh(self):
    """Embed one bounded batch of dirty phrasings; re-enqueue while work remains, else publish.

    Many edits enqueue many of these; runs that find nothing dirty and an index that is already
    current return at once, so bursts collapse into a few batches and one publish.
    """
    result = services.variants_embed_batch()
    if result.remaining:
        kb_refresh.delay()
        return {"embedded": result.embedded, "remaining": result.remaining}
    version = services.index_publish_if_stale()
    return {"embedded": result.embedded, "remaining": 0, "index_version": version.pk if version else None}


@worker_ready.connect
def _sweep_on_start(**_kwargs):
    """Catch up on whatever changed while no worker ran (entries are saved even then)."""
    kb_refresh.delay()

"""Celery tasks of the knowledge base: thin wrappers over kb.services."""

import logging

from celery import shared_task
from celery.signals import worker_process_init, worker_ready
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
    # Read before looking for dirty rows: see index_publish_if_stale.
    revision = services.kb_revision()
    result = services.variants_embed_batch()
    if result.remaining:
        # Keep this chain going while it finds work; a chain that finds every remaining row
        # locked by another worker's batch stops, and the busy chains finish the job.
        if result.selected:
            kb_refresh.delay()
        return {"embedded": result.embedded, "remaining": result.remaining}
    version = services.index_publish_if_stale(revision=revision)
    return {"embedded": result.embedded, "remaining": 0, "index_version": version.pk if version else None}


@worker_process_init.connect
def _load_embedder(**_kwargs):
    """Load the model when a pool process starts, not inside the first batch someone waits for."""
    import os

    from django.conf import settings

    from kb.embedders import get_embedder, math_threads_set

    embedder = get_embedder()
    # Share the cores between the pool processes instead of each claiming all of them.
    math_threads_set((os.cpu_count() or 1) // max(1, settings.CELERY_WORKER_CONCURRENCY))
    embedder.encode(["warm up"])


def kb_refresh_fan_out() -> None:
    """Start one kb_refresh chain per pool process, so all of them embed in parallel."""
    from django.conf import settings

    for _ in range(max(1, settings.CELERY_WORKER_CONCURRENCY)):
        kb_refresh.delay()


@worker_ready.connect
def _sweep_on_start(**_kwargs):
    """Catch up on whatever changed while no worker ran (entries are saved even then)."""
    kb_refresh_fan_out()

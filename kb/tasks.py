"""Celery tasks of the knowledge base: thin wrappers over kb.services and kb.import_jobs.

kb_refresh runs on the embedding queue (CELERY_EMBED_QUEUE, routed by CELERY_TASK_ROUTES). Only a
worker that consumes that queue loads the models, and that worker alone decides how many batches run
at once: an edit enqueues one kb_refresh, and the worker that runs it starts a chain per pool
process. kb_import_run (large imports) runs on the default queue: it needs no model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from celery import shared_task
from celery.signals import celeryd_after_setup, worker_process_init, worker_ready
from django.conf import settings
from django.db import InterfaceError, OperationalError

from kb import import_jobs, services

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerRole:
    """What this worker process was started for."""

    embeds: bool  # it consumes the embedding queue
    concurrency: int  # its pool processes


# Recorded in the worker's main process before the pool forks, so pool processes inherit it; None
# outside a `celery worker` (a task a test runs in-process).
_worker_role: WorkerRole | None = None


@celeryd_after_setup.connect
def _worker_role_record(sender, instance, **_kwargs):
    """Remember the queues (after --queues) and the pool size (after --concurrency) of this worker."""
    global _worker_role
    consumed = instance.app.amqp.queues.consume_from
    _worker_role = WorkerRole(embeds=settings.CELERY_EMBED_QUEUE in consumed, concurrency=int(instance.concurrency))


def _pool_size() -> int:
    if _worker_role is not None:
        return max(1, _worker_role.concurrency)
    return max(1, settings.CELERY_WORKER_CONCURRENCY)


# Both tasks retry only what a retry can fix: the database restarting or a dropped connection. Model
# errors are recorded on the rows by the services instead. Each run is one bounded step.
RETRIED_STEP = {
    "bind": True,
    "acks_late": True,
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "max_retries": 5,
    "soft_time_limit": 300,
    "time_limit": 360,
}


@shared_task(**RETRIED_STEP)
def kb_refresh(self, chain: bool = False):
    """Embed one bounded batch of dirty phrasings; re-enqueue while work remains, else publish.

    A request (an edit, the beat sweep, a worker's start: ``chain`` false) whose batch leaves work
    behind starts one chain per pool process of the worker running it, so all of them embed in
    parallel; a chain (``chain`` true) only continues itself. Many edits enqueue many requests;
    runs that find nothing dirty and an index that is already current return at once, so bursts
    collapse into a few batches and one publish.
    """
    # Read before looking for dirty rows: see index_publish_if_stale.
    revision = services.kb_revision()
    result = services.variants_embed_batch()
    if result.remaining:
        # Keep this chain going while it finds work; a chain that finds every remaining row
        # locked by another worker's batch stops, and the busy chains finish the job.
        if result.selected:
            for _ in range(1 if chain else _pool_size()):
                kb_refresh.delay(chain=True)
        return {"embedded": result.embedded, "remaining": result.remaining}
    version = services.index_publish_if_stale(revision=revision)
    return {"embedded": result.embedded, "remaining": 0, "index_version": version.pk if version else None}


# One step reads a file within the import limits, or saves one batch of rows: well within the limits.
@shared_task(**RETRIED_STEP)
def kb_import_run(self, job_id: str):
    """Run the next step of an import job (kb.import_jobs) and queue the one after it, so a large
    import is many short tasks whose progress commits as it goes."""
    try:
        more = import_jobs.import_job_step(job_id=job_id)
    except (OperationalError, InterfaceError):
        raise  # retried: the job resumes where its last step committed
    except Exception:
        import_jobs.import_job_fail(job_id=job_id, detail="The import stopped on an unexpected error (worker log).")
        raise
    if more:
        kb_import_run.delay(job_id)
    return {"job": job_id, "more": more}


@worker_process_init.connect
def _load_embedder(**_kwargs):
    """Load the model when a pool process of an embedding worker starts, not inside the first
    batch someone waits for. Other workers never load it (nor torch: ~0.9 GB a process)."""
    if _worker_role is None or not _worker_role.embeds:
        return
    from kb.embedders import get_embedder, math_threads_set
    from kb.embedding_models import active_embedder

    try:
        _, embedder = active_embedder()
    except Exception:  # noqa: BLE001 - no database yet: the base model, and batches look again
        logger.warning("could not read the active embedding model at start-up", exc_info=True)
        embedder = get_embedder()
    # Share the cores between the pool processes instead of each claiming all of them.
    math_threads_set((os.cpu_count() or 1) // _pool_size())
    embedder.encode(["warm up"])


@worker_ready.connect
def _sweep_on_start(**_kwargs):
    """An embedding worker catches up on whatever changed while none ran (entries are saved even then)."""
    if _worker_role is not None and _worker_role.embeds:
        kb_refresh.delay()


@shared_task(name="kb.tasks.kb_tune_run")
def kb_tune_run() -> dict:
    """kb_tune as a job (the admin's "Tune now"): minutes of CPU on the default queue, never on the
    embedding queue, whose worker must keep embedding editors' changes meanwhile. Not retried and
    not acknowledged late: a run that died is not started again behind anyone's back."""
    from kb.tuning_runs import kb_tune

    outcome = kb_tune()
    return {
        "model": outcome.model.label if outcome.model else None,
        "switched": outcome.switched,
        "reason": outcome.reason,
    }

"""Imports too large for a web request, run as a Celery job (kb.tasks.kb_import_run).

The first step reads the file (within the limits of kb.import_files) and stages its checked entry
rows in the database; each later step saves the next JOB_BATCH_ROWS of them in one transaction
together with the job's progress. So every step is short (its own time limit), the admin page and
the API see progress as it happens, and a worker that dies mid-way is redelivered the step and
resumes where the last batch committed.

Unlike an import inside a request (all or nothing), a job saves the valid rows and reports the
others: one bad row should not throw away an afternoon's 200,000. Its dry run lists them first.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial
from pathlib import PurePath

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from kb.import_files import ImportFileError
from kb.importing import (
    MAX_ERRORS_SHOWN,
    ImportResult,
    PlanRow,
    entry_rows_checked,
    entry_save,
    read_rows_from_bytes,
)
from kb.models import ImportJob, ImportJobRow
from kb.services import EntryInvalid

logger = logging.getLogger(__name__)

# Rows saved per step: a few seconds of work, so progress moves and no step nears its time limit.
JOB_BATCH_ROWS = 500
STAGE_BATCH_ROWS = 1000
# Rows of a dry run kept for its preview (the counts cover the whole file).
PREVIEW_ROWS = 200
# By name, as kb.services queues kb_refresh: kb.tasks imports this module.
IMPORT_TASK = "kb.tasks.kb_import_run"
State = ImportJob.State


def import_job_create(*, name: str, content: bytes, dry_run: bool, unpublished: bool = False, user=None) -> ImportJob:
    """Record an import job for an uploaded file and queue it once the transaction commits.
    Dry runs older than KB_IMPORT_STAGING_SECONDS that were never confirmed drop their upload."""
    import_jobs_prune()
    job = ImportJob.objects.create(
        file_name=_short_name(name),
        content=content,
        dry_run=dry_run,
        unpublished=unpublished,
        created_by=_user_or_none(user),
    )
    transaction.on_commit(partial(_enqueue, job.pk))
    return job


def _user_or_none(user):
    return user if user is not None and user.is_authenticated else None


def import_job_record(*, name: str, result, unpublished: bool, user=None) -> ImportJob:
    """Record an import done within a request (kb.importing.entries_import), so that it has the
    same progress view as a background one: its entries followed until searchable."""
    return ImportJob.objects.create(
        file_name=_short_name(name),
        state=State.DONE,
        rows_total=len(result.plan),
        rows_done=len(result.plan),
        created=result.created,
        updated=result.updated,
        unpublished=unpublished,
        warning_count=result.warning_count,
        entry_ids=result.entry_ids,
        created_by=_user_or_none(user),
    )


def import_job_confirm(*, job: ImportJob, unpublished: bool = False, user=None) -> ImportJob | None:
    """Import for real the file a finished dry run checked (the upload moves to the new job),
    every row unpublished if asked; None when there is nothing to confirm (not a finished dry run,
    confirmed already, or expired)."""
    with transaction.atomic():
        locked = ImportJob.objects.select_for_update().filter(pk=job.pk, dry_run=True, state=State.DONE).first()
        content = bytes(locked.content) if locked is not None else b""
        if not content:
            return None
        locked.content = b""
        locked.save(update_fields=["content", "updated_at"])
        return import_job_create(
            name=locked.file_name, content=content, dry_run=False, unpublished=unpublished, user=user
        )


def import_job_confirmable(*, job_id) -> bool:
    """Whether a job is a finished dry run whose upload is still kept for the real import."""
    return ImportJob.objects.filter(pk=job_id, dry_run=True, state=State.DONE).exclude(content=b"").exists()


def import_job_step(*, job_id) -> bool:
    """Do the next bounded piece of an import job: read the file and stage its rows (the first
    step), or save the next JOB_BATCH_ROWS rows. Returns whether work remains.

    Safe to run twice: a step holds the job's row lock, and a step that finds it held (a
    redelivered task while the first still runs) does nothing."""
    with transaction.atomic():
        # The upload (up to KB_IMPORT_MAX_BYTES) is read by the first step only.
        job = ImportJob.objects.select_for_update(skip_locked=True).defer("content").filter(pk=job_id).first()
        if job is None or job.finished:
            return False
        if job.state == State.QUEUED:
            return _job_stage(job)
        return _job_batch(job)


def import_job_fail(*, job_id, detail: str) -> None:
    """Mark an unfinished job failed (a step stopped on an error nobody expected)."""
    with transaction.atomic():
        job = ImportJob.objects.select_for_update().defer("content").filter(pk=job_id).first()
        if job is not None and not job.finished:
            _job_finish(job, state=State.FAILED, detail=detail)


def import_jobs_prune() -> int:
    """Drop the uploads of dry runs not confirmed within KB_IMPORT_STAGING_SECONDS; returns how many."""
    cutoff = timezone.now() - timedelta(seconds=settings.KB_IMPORT_STAGING_SECONDS)
    return (
        ImportJob.objects.filter(dry_run=True, state=State.DONE, updated_at__lte=cutoff)
        .exclude(content=b"")
        .update(content=b"")
    )


def _short_name(name: str) -> str:
    # The suffix tells the readers the format, so it survives the cut.
    path = PurePath(name)
    return path.name if len(path.name) <= 255 else path.stem[: 255 - len(path.suffix[:20])] + path.suffix[:20]


def _enqueue(job_id) -> None:
    try:
        current_app.send_task(IMPORT_TASK, args=[str(job_id)], ignore_result=True)
    except Exception:  # noqa: BLE001 - a down broker: say so on the job instead of leaving it queued
        logger.exception("could not queue import job %s", job_id)
        ImportJob.objects.filter(pk=job_id, state=State.QUEUED).update(
            state=State.FAILED, detail="The import could not be queued (the task queue is unreachable); try again."
        )


def _job_stage(job: ImportJob) -> bool:
    content = ImportJob.objects.filter(pk=job.pk).values_list("content", flat=True).get()
    try:
        rows = read_rows_from_bytes(job.file_name, bytes(content))
    except ImportFileError as exc:
        _job_finish(job, state=State.FAILED, detail=str(exc))
        return False
    batch = []
    for number, fields, error in entry_rows_checked(rows):
        batch.append(ImportJobRow(job=job, number=number, entry_fields=fields or {}, error=error or ""))
        if len(batch) == STAGE_BATCH_ROWS:
            ImportJobRow.objects.bulk_create(batch)
            batch = []
    ImportJobRow.objects.bulk_create(batch)
    job.rows_total, job.state = len(rows), State.RUNNING
    if not job.dry_run:
        job.content = b""  # a dry run keeps it for the confirm
    job.save()
    return True


def _job_batch(job: ImportJob) -> bool:
    staged = list(job.rows.order_by("number")[:JOB_BATCH_ROWS])
    result = ImportResult()
    # A savepoint: a dry run rolls back what the batch saved (and the embedding it queued), not the
    # progress recorded below.
    with transaction.atomic():
        for row in staged:
            try:
                if row.error:
                    raise EntryInvalid(row.error)
                action, entry_id = entry_save(row.entry_fields, unpublished=job.unpublished)
                if action == "create":
                    result.created += 1
                else:
                    result.updated += 1
                result.plan.append(PlanRow.of(row.number, action, row.entry_fields, unpublished=job.unpublished))
                result.entry_ids.append(entry_id)
            except EntryInvalid as exc:
                result.error(f"row {row.number}: {exc}")
        if job.dry_run:
            transaction.set_rollback(True)
    ImportJobRow.objects.filter(pk__in=[row.pk for row in staged]).delete()
    job.rows_done += len(staged)
    job.created += result.created
    job.updated += result.updated
    job.error_count += result.error_count
    job.errors = (job.errors + result.errors)[:MAX_ERRORS_SHOWN]
    job.warning_count += result.warning_count
    if job.dry_run:
        job.preview = (job.preview + [row.as_dict() for row in result.plan])[:PREVIEW_ROWS]
    else:
        job.entry_ids = job.entry_ids + result.entry_ids
    more = job.rows.exists()
    if not more:
        job.state = State.DONE
    job.save()
    return more


def _job_finish(job: ImportJob, *, state: str, detail: str = "") -> None:
    job.rows.all().delete()
    job.state, job.detail, job.content = state, detail, b""
    job.save()

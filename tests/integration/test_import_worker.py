"""A large import runs on a real Celery worker (the default queue, on the real Redis): the web
side answers 202 at once, and the job's progress moves in the database while the worker saves it
batch by batch."""

import time

import pytest
from rest_framework.test import APIClient

from kb.import_jobs import JOB_BATCH_ROWS
from kb.models import Entry, ImportJob
from tests.factories import upload
from tests.integration.workers import start_worker, stop_worker
from tests.kb.crafted_imports import csv_rows

pytestmark = [pytest.mark.redis, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(transactional_db, redis_client, tmp_path, settings):
    """A worker of the default queue only (no models loaded), as docker-compose's `worker`."""
    log_path = tmp_path / "worker.log"
    process = start_worker(log_path, queues=[settings.CELERY_TASK_DEFAULT_QUEUE])
    yield log_path
    stop_worker(process)
    print(log_path.read_text()[-4000:])


def test_a_large_import_runs_on_the_worker_with_progress(worker, django_user_model):
    editor = APIClient()
    editor.force_login(django_user_model.objects.create_superuser("editor", "editor@example.com", "pw-editor-123"))
    rows = 3 * JOB_BATCH_ROWS
    started = time.monotonic()
    response = editor.post("/api/kb/import", {"file": upload("large.csv", csv_rows(rows))}, format="multipart")
    assert response.status_code == 202 and time.monotonic() - started < 5
    url = response.json()["url"]

    seen = []
    deadline = time.monotonic() + 180
    while (job := editor.get(url).json())["state"] not in {"done", "failed"}:
        assert time.monotonic() < deadline, f"the job is still {job['state']}: {worker.read_text()[-3000:]}"
        seen.append((job["state"], job["rows_done"], job["rows_total"]))
        time.sleep(0.1)
    assert job["state"] == "done", (job["detail"], worker.read_text()[-3000:])
    assert (job["rows_done"], job["rows_total"], job["created"], job["error_count"]) == (rows, rows, rows, 0)
    # Progress was visible on the way: the job running with some of its batches saved.
    assert any(state == "running" and 0 < done < rows and total == rows for state, done, total in seen), seen
    assert Entry.objects.count() == rows
    assert bytes(ImportJob.objects.get().content) == b""

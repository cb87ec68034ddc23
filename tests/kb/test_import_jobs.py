"""Imports over KB_IMPORT_INLINE_MAX_ROWS rows run as a background job (kb.import_jobs, the task
kb.tasks.kb_import_run): progress the admin page and the API show, valid rows saved while bad ones
are listed (the first 100, and how many more), safe to run twice. The steps run in-process here;
tests/integration/test_import_worker.py runs them on a real worker."""

import json
import re

import pytest
from django.db import OperationalError

from kb import import_jobs, tasks
from kb.import_jobs import import_job_step
from kb.models import Entry, ImportJob, ImportJobRow
from tests.factories import entries_create, upload
from tests.kb.test_api import make_user

pytestmark = pytest.mark.django_db

IMPORT = "/api/kb/import"
ADMIN_IMPORT = "/admin/kb/entry/import/"


class Broker:
    """Stands in for Celery's app: records the tasks sent by name."""

    def __init__(self):
        self.sent = []

    def send_task(self, name, args=(), **options):
        self.sent.append((name, *args))


@pytest.fixture
def broker(monkeypatch):
    broker = Broker()
    monkeypatch.setattr(import_jobs, "current_app", broker)
    return broker


@pytest.fixture(autouse=True)
def small_limits(settings, monkeypatch):
    """Jobs from a handful of rows, saved four at a time."""
    settings.KB_IMPORT_INLINE_MAX_ROWS = 5
    monkeypatch.setattr(import_jobs, "JOB_BATCH_ROWS", 4)


@pytest.fixture
def editor():
    return make_user("editor", group="KB editors")


def run_job(job_id) -> int:
    """Run a job's steps to the end, as the task chain does; returns how many steps it took."""
    steps = 1
    while import_job_step(job_id=job_id):
        steps += 1
    return steps


def faq_json(rows) -> bytes:
    return json.dumps(rows).encode()


def test_a_large_file_is_a_job_that_saves_the_valid_rows_and_lists_the_others(
    editor, broker, django_capture_on_commit_callbacks
):
    track = entries_create()[0]
    rows = [{"question": f"Question {number}?", "answer": f"Answer {number}."} for number in range(1, 11)]
    rows[2]["answer"] = ""  # row 3
    rows[5]["language"] = "tlh"  # row 6
    rows[7]["question"] = "Question 1?"  # row 8: as row 1
    rows[9] = {"question": track.question, "answer": "Updated.", "variants": ["parcel"]}  # row 10
    with django_capture_on_commit_callbacks(execute=True):
        response = editor.post(IMPORT, {"file": upload("faq.json", faq_json(rows))}, format="multipart")
    assert response.status_code == 202, response.json()
    job = response.json()
    assert job["state"] == "queued" and job["rows_total"] is None and job["dry_run"] is False
    assert job["url"] == f"/api/kb/import/jobs/{job['id']}"
    # Queued by name once committed, on the default queue (no models needed).
    assert broker.sent == [(tasks.kb_import_run.name, job["id"])]
    assert Entry.objects.count() == 4

    # The first step reads the file and stages its rows; each later one saves four.
    assert import_job_step(job_id=job["id"]) is True
    progress = editor.get(job["url"]).json()
    assert (progress["state"], progress["rows_done"], progress["rows_total"]) == ("running", 0, 10)
    assert import_job_step(job_id=job["id"]) is True
    progress = editor.get(job["url"]).json()
    assert (progress["rows_done"], progress["created"], progress["error_count"]) == (4, 3, 1)
    assert Entry.objects.count() == 4 + 3  # committed with the progress, before the job ends
    assert run_job(job["id"]) == 2

    done = editor.get(job["url"]).json()
    assert done["state"] == "done" and done["rows_done"] == done["rows_total"] == 10
    assert (done["created"], done["updated"], done["error_count"], done["errors_more"]) == (6, 1, 3, 0)
    assert done["errors"] == [
        "row 3: answer is empty",
        "row 6: unknown language 'tlh' (known: en, zh)",
        "row 8: same question as row 1",
    ]
    assert Entry.objects.count() == 4 + 6
    track.refresh_from_db()
    assert track.answer == "Updated." and set(track.variants.values_list("text", flat=True)) == {
        track.question,
        "parcel",
    }
    # Nothing is left behind: the staged rows are saved and gone, the upload dropped.
    assert not ImportJobRow.objects.exists() and bytes(ImportJob.objects.get().content) == b""


def test_row_errors_past_the_first_hundred_are_counted_not_listed(editor, broker, monkeypatch):
    monkeypatch.setattr(import_jobs, "JOB_BATCH_ROWS", 64)
    rows = [{"question": f"Question {number}?", "answer": ""} for number in range(1, 251)]
    job = editor.post(IMPORT, {"file": upload("faq.json", faq_json(rows))}, format="multipart").json()
    run_job(job["id"])
    done = editor.get(job["url"]).json()
    assert (done["error_count"], done["errors_more"], len(done["errors"])) == (250, 150, 100)
    assert done["errors"][0] == "row 1: answer is empty" and done["errors"][-1] == "row 100: answer is empty"


def test_a_job_whose_file_is_unreadable_fails_with_the_reason(editor, broker, settings):
    # Large JSON is not parsed in the web process at all (KB_IMPORT_INLINE_MAX_BYTES): the job
    # finds the problem and says so.
    settings.KB_IMPORT_INLINE_MAX_BYTES = 100
    content = faq_json([{"question": f"Question {number}?", "answer": "x"} for number in range(10)])[:-1]
    job = editor.post(IMPORT, {"file": upload("faq.json", content)}, format="multipart").json()
    assert run_job(job["id"]) == 1
    failed = editor.get(job["url"]).json()
    assert failed["state"] == "failed" and failed["detail"].startswith("faq.json is not valid JSON")
    assert not Entry.objects.exists() and not ImportJobRow.objects.exists()


def test_a_step_that_dies_mid_batch_is_redone_without_doubling_rows(editor, broker, monkeypatch):
    rows = [{"question": f"Question {number}?", "answer": "x"} for number in range(1, 9)]
    job = editor.post(IMPORT, {"file": upload("faq.json", faq_json(rows))}, format="multipart").json()
    import_job_step(job_id=job["id"])  # staged
    real_save, calls = import_jobs.entry_save, []

    def dies_on_the_third_row(fields, **options):
        calls.append(fields)
        if len(calls) == 3:
            raise OperationalError("the database went away")
        return real_save(fields, **options)

    monkeypatch.setattr(import_jobs, "entry_save", dies_on_the_third_row)
    with pytest.raises(OperationalError):
        import_job_step(job_id=job["id"])
    # The batch and its progress rolled back together; the redelivered step does it again.
    assert not Entry.objects.exists() and ImportJob.objects.get().rows_done == 0
    run_job(job["id"])
    assert Entry.objects.count() == 8 and ImportJob.objects.get().created == 8
    # A finished job's step (a duplicate delivery) does nothing.
    assert import_job_step(job_id=job["id"]) is False and Entry.objects.count() == 8


def test_the_task_queues_the_next_step_and_fails_the_job_on_an_unexpected_error(editor, broker, monkeypatch):
    queued = []
    monkeypatch.setattr(tasks.kb_import_run, "delay", queued.append)
    rows = [{"question": f"Question {number}?", "answer": "x"} for number in range(1, 9)]
    job = editor.post(IMPORT, {"file": upload("faq.json", faq_json(rows))}, format="multipart").json()
    assert tasks.kb_import_run(job["id"]) == {"job": job["id"], "more": True}
    assert queued == [job["id"]]
    monkeypatch.setattr(import_jobs, "entry_save", lambda fields, **options: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        tasks.kb_import_run(job["id"])
    failed = ImportJob.objects.get()
    assert failed.state == "failed" and "unexpected error" in failed.detail and queued == [job["id"]]


def test_a_broker_that_is_down_fails_the_job_instead_of_leaving_it_queued(editor, monkeypatch):
    class DownBroker:
        def send_task(self, *args, **kwargs):
            raise ConnectionError("no broker")

    monkeypatch.setattr(import_jobs, "current_app", DownBroker())
    rows = [{"question": f"Question {number}?", "answer": "x"} for number in range(1, 9)]
    job = import_jobs.import_job_create(name="faq.json", content=faq_json(rows), dry_run=False)
    import_jobs._enqueue(job.pk)  # what the commit runs
    job.refresh_from_db()
    assert job.state == "failed" and "could not be queued" in job.detail


def test_admin_checks_a_large_file_in_a_job_then_imports_it_on_confirm(editor_client, broker):
    rows = [{"question": f"Question {number}?", "answer": "x"} for number in range(1, 9)]
    rows.append({"question": "Bad?", "answer": ""})
    response = editor_client.post(ADMIN_IMPORT, {"file": upload("faq.json", faq_json(rows))})
    job = ImportJob.objects.get()
    assert response.status_code == 302 and response.url == f"{ADMIN_IMPORT}jobs/{job.pk}/"
    assert job.dry_run and job.created_by.username == "editor"
    page = editor_client.get(response.url).content.decode()
    assert "Queued" in page and 'http-equiv="refresh"' in page

    import_job_step(job_id=job.pk)
    import_job_step(job_id=job.pk)
    page = editor_client.get(response.url).content.decode()
    assert "<progress" in page and "4 of 9 rows" in page
    run_job(job.pk)
    page = editor_client.get(response.url).content.decode()
    assert "8 new, 0 updated, 1 row with errors (would be skipped)" in page and "row 9: answer is empty" in page
    assert 'http-equiv="refresh"' not in page and "Confirm import" in page
    # The first rows as the preview shows them, with their answers.
    assert "<td>1</td><td>create</td>" in page and "Question 8?" in page
    assert not Entry.objects.exists()  # a dry run

    confirm = editor_client.post(response.url, {"confirm": "1"})
    real = ImportJob.objects.exclude(pk=job.pk).get()
    assert confirm.status_code == 302 and confirm.url == f"{ADMIN_IMPORT}jobs/{real.pk}/"
    run_job(real.pk)
    page = editor_client.get(confirm.url).content.decode()
    assert "Imported: 8 created, 0 updated, 1 row skipped" in page
    assert Entry.objects.count() == 8
    # The upload moved to the real job and is gone: confirming the dry run again does nothing.
    again = editor_client.post(response.url, {"confirm": "1"}, follow=True).content.decode()
    assert "imported already or has expired" in again and Entry.objects.count() == 8
    # The import page links the recent jobs.
    listing = editor_client.get(ADMIN_IMPORT).content.decode()
    assert re.search(f'href="{ADMIN_IMPORT}jobs/{real.pk}/">faq.json</a>: done', listing)


def test_a_large_file_with_placeholder_answers_is_imported_unpublished_by_default(editor_client, broker):
    rows = [{"question": f"Question {number}?", "answer": "TODO" if number % 2 else "Yes."} for number in range(1, 9)]
    response = editor_client.post(ADMIN_IMPORT, {"file": upload("faq.json", faq_json(rows))})
    job = ImportJob.objects.get()
    run_job(job.pk)
    page = editor_client.get(response.url).content.decode()
    assert job.__class__.objects.get(pk=job.pk).warning_count == 4 and 'id="import-warnings"' in page
    assert re.search(r'class="button default" name="unpublished" value="1"[^>]*>Import as unpublished', page)
    confirm = editor_client.post(response.url, {"confirm": "1", "unpublished": "1"})
    real = ImportJob.objects.exclude(pk=job.pk).get()
    run_job(real.pk)
    real.refresh_from_db()
    assert real.unpublished and sorted(real.entry_ids) == sorted(Entry.objects.values_list("id", flat=True))
    assert Entry.objects.count() == 8 and not Entry.objects.filter(is_published=True).exists()
    progress = editor_client.get(confirm.url).content.decode()
    assert "all unpublished" in progress and "0 of 8</b> entries searchable" in progress


def test_an_unconfirmed_dry_run_drops_its_upload_after_the_staging_period(editor_client, broker, settings):
    rows = [{"question": f"Question {number}?", "answer": "x"} for number in range(1, 9)]
    editor_client.post(ADMIN_IMPORT, {"file": upload("faq.json", faq_json(rows))})
    job = ImportJob.objects.get()
    run_job(job.pk)
    assert import_jobs.import_job_confirmable(job_id=job.pk)
    settings.KB_IMPORT_STAGING_SECONDS = 0
    assert import_jobs.import_jobs_prune() == 1
    assert not import_jobs.import_job_confirmable(job_id=job.pk)
    assert "Import the valid rows" not in editor_client.get(f"{ADMIN_IMPORT}jobs/{job.pk}/").content.decode()


def test_only_importers_see_jobs(editor, broker):
    rows = [{"question": f"Question {number}?", "answer": "x"} for number in range(1, 9)]
    job = editor.post(IMPORT, {"file": upload("faq.json", faq_json(rows))}, format="multipart").json()
    viewer = make_user("viewer", perms=["kb.view_entry", "kb.view_variant"])
    assert viewer.get(job["url"]).status_code == 403
    assert editor.get("/api/kb/import/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert editor.get("/api/kb/import/jobs/not-a-uuid").status_code == 404

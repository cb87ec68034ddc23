"""Issue 10's crafted import files, one test for each row of its table: refused (or handed to a
job) before their tables are read, with a 400 that says why, never a 500; answered fast, small, and
within a bounded amount of memory in the web process."""

import time
import tracemalloc

import pytest

from kb.models import Entry, ImportJob
from tests.factories import upload
from tests.kb.crafted_imports import DEEP_JSON, csv_rows, xlsx_declaring_rows, xlsx_with_far_cell

pytestmark = pytest.mark.django_db

IMPORT = "/api/kb/import"
ADMIN_IMPORT = "/admin/kb/entry/import/"
# Python allocations (tracemalloc peak) of one import request through the test client, the
# client's own copies of the upload included. Measured here: 0.1-4 MB for the refused files but
# the 11.6 MB CSV (22 MB: the client's two copies of it), 11 MB for a 3.7 MB CSV handed to a job.
# bench/bench_import_memory.py measures a process's peak RSS for the same files.
REQUEST_PEAK_BOUND = 40 * 2**20
# The issue measured 62 s for the 3M-row dry run; generous for a shared 2-core machine.
FAST_SECONDS = 5.0


@pytest.fixture
def editor(editor_client):
    """An editor whose client has imported once already, so that no measurement includes the
    modules (openpyxl, the API's) that the first import of a process loads."""
    for name, content in (("warm.xlsx", xlsx_with_far_cell(2, declared=False)), ("warm.csv", csv_rows(1))):
        assert editor_client.post(f"{IMPORT}?dry_run=1", {"file": upload(name, content)}).status_code == 200
    return editor_client


def measured_post(client, url: str, data: dict):
    """The response, its time and the peak of Python allocations while it was made."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        response = client.post(url, data)
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return response, seconds, peak


def assert_refused_fast_and_small(response, seconds, peak, message):
    assert response.status_code == 400, response.content[:500]
    assert message in response.json()["detail"]
    assert seconds < FAST_SECONDS, f"took {seconds:.1f} s"
    assert len(response.content) < 1_000, len(response.content)
    assert peak < REQUEST_PEAK_BOUND, f"peaked at {peak / 2**20:.1f} MB"
    assert not Entry.objects.exists() and not ImportJob.objects.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        # ~1 MB that holds the 3,000,000 rows (288 MB of sheet XML): refused by its unpacked size.
        pytest.param(lambda: xlsx_declaring_rows(), "unpacks to 288,001,438 bytes", id="holding-3M-rows"),
        # A few KB that only declare them: refused by the declared dimensions.
        pytest.param(lambda: xlsx_declaring_rows(written=10), "declares 3,000,000 rows", id="declaring-3M-rows"),
    ],
)
def test_an_xlsx_of_3m_rows_dry_run_is_refused_before_a_row_is_read(editor, content, message):
    # Issue 10: 62 s, a 113 MB response, the web process 0.8 -> 1.7 GB, chat sockets closed.
    response, seconds, peak = measured_post(editor, f"{IMPORT}?dry_run=1", {"file": upload("big.xlsx", content())})
    assert_refused_fast_and_small(response, seconds, peak, message)
    # Its declared size alone stops it, however large the unpack limit.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("django.conf.settings.KB_IMPORT_MAX_UNPACKED_BYTES", 10**10)
        response, seconds, peak = measured_post(editor, f"{IMPORT}?dry_run=1", {"file": upload("big.xlsx", content())})
    assert_refused_fast_and_small(response, seconds, peak, "declares 3,000,000 rows; the limit is 200,000")
    # The admin's preview says the same on its page.
    page = editor.post(ADMIN_IMPORT, {"file": upload("big.xlsx", content())})
    assert page.status_code == 200 and message in page.content.decode()


def test_an_xlsx_with_one_cell_in_column_xfd(editor):
    # Issue 10: +220 MB in 1.3 s. Declared as a spreadsheet program declares it (A1:XFD31), it is
    # refused up front, naming the column to clean up.
    response, seconds, peak = measured_post(editor, IMPORT, {"file": upload("far.xlsx", xlsx_with_far_cell())})
    assert_refused_fast_and_small(response, seconds, peak, "declares cells up to column XFD (16,384 columns)")
    # Without a declared size, the far cell is never read and the table imports.
    response, seconds, peak = measured_post(
        editor, IMPORT, {"file": upload("far.xlsx", xlsx_with_far_cell(declared=False))}
    )
    assert response.status_code == 200 and response.json() == {
        "created": 30,
        "updated": 0,
        "dry_run": False,
        "warnings": 0,
    }
    assert peak < REQUEST_PEAK_BOUND and seconds < FAST_SECONDS


def test_json_nested_100000_deep_is_a_400(editor):
    # Issue 10: a 500 with the debug page.
    response, seconds, peak = measured_post(editor, IMPORT, {"file": upload("deep.json", DEEP_JSON)})
    assert_refused_fast_and_small(response, seconds, peak, "nested too deeply")
    page = editor.post(ADMIN_IMPORT, {"file": upload("deep.json", DEEP_JSON)})
    assert page.status_code == 200 and "nested too deeply" in page.content.decode()


def test_a_huge_csv_is_refused_or_handed_to_a_job_without_being_read_whole(editor, settings):
    # Over the size limit: refused before it is read.
    huge = csv_rows(300_000)  # 11.6 MB
    response, seconds, peak = measured_post(editor, IMPORT, {"file": upload("huge.csv", huge)})
    assert_refused_fast_and_small(response, seconds, peak, f"huge.csv is {len(huge):,} bytes; the limit is 10,485,760")
    # Under it, with more rows than allowed: refused by a streamed count (one row in memory at a time).
    many = b"question,answer\n" + b"q,a\n" * 250_000  # 1 MB
    response, seconds, peak = measured_post(editor, IMPORT, {"file": upload("many.csv", many)})
    assert_refused_fast_and_small(response, seconds, peak, "has more than 200,000 rows")
    # Within the limits but over KB_IMPORT_INLINE_MAX_ROWS: a background job, not rows in the web process.
    large = csv_rows(100_000)  # 3.7 MB
    response, seconds, peak = measured_post(editor, IMPORT, {"file": upload("large.csv", large)})
    assert response.status_code == 202 and response.json()["state"] == "queued"
    assert seconds < FAST_SECONDS and peak < REQUEST_PEAK_BOUND, f"peaked at {peak / 2**20:.1f} MB"
    assert not Entry.objects.exists()

"""Starting real Celery worker and management-command processes on the test database."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from config.runstack import worker_command, worker_queues
from kb.models import IndexVersion, KbRevision, Variant


def database_url() -> str:
    """The URL of the database the current test uses (pytest-django's test database)."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def process_env(**extra: str) -> dict:
    """Environment for a child process that shares this test's database, Redis and index folder."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(),
        "KB_INDEX_DIR": str(settings.KB_INDEX_DIR),
        "KB_INDEX_POLL_SECONDS": "0",
        **extra,
    }


def start_worker(log_path: Path, *, queues: list[str] | None = None, **extra_env: str) -> subprocess.Popen:
    """A Celery worker started with the command `make run` uses, in its own process group; it
    consumes ``queues``, by default every one (embedding's included), as `make run`'s does."""
    return subprocess.Popen(
        worker_command(queues or worker_queues()),
        env=process_env(**extra_env),
        stdout=log_path.open("a"),
        stderr=subprocess.STDOUT,
        cwd=settings.BASE_DIR,
        start_new_session=True,
    )


def stop_worker(process: subprocess.Popen, *, kill: bool = False) -> None:
    """Stop the worker and its pool processes: SIGKILL (a crash) or SIGTERM (a warm shutdown)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def manage(*args: str, **extra_env: str) -> subprocess.Popen:
    """A manage.py command in a child process on the test database."""
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        env=process_env(**extra_env),
        cwd=settings.BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_version(newer_than: int, timeout: float = 120.0) -> IndexVersion:
    """Wait until a version newer than ``newer_than``, built at the current KB revision, is
    published and nothing is left dirty. (A version published while an edit's phrasings were still
    being embedded is newer but stale: the next one follows.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        version = IndexVersion.objects.order_by("-id").first()
        current = KbRevision.objects.filter(id=1).values_list("value", flat=True).first() or 0
        if (
            version is not None
            and version.pk > newer_than
            and version.kb_revision >= current
            and not Variant.objects.filter(is_dirty=True).exists()
        ):
            return version
        time.sleep(0.2)
    raise AssertionError("no new index version was published in time")

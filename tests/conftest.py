"""Shared fixtures. PostgreSQL and Redis on 127.0.0.1 are used when present; with CI=true their
absence fails the run instead of skipping. The settings (config/settings/test.py) name them without
probing; pytest_configure below probes once and falls back."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest
from django.conf import settings

os.environ.setdefault("CHATBOT_WARM_UP", "0")

IN_CI = os.environ.get("CI", "").lower() == "true"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _default_database_use(config: dict) -> None:
    """Point the default database at ``config``. pytest-django set Django up before any conftest
    loads, and loading the models built (without connecting) a wrapper for the configured backend:
    the settings dict Django's connection handler reads is changed in place and that wrapper
    dropped, so the first connection is made with ``config``."""
    from django.db import connections

    databases = settings.DATABASES  # the very dict the connection handler holds
    databases["default"] = dict(config)
    connections.configure_settings(databases)  # Django's defaults, as at start-up
    try:
        del connections["default"]
    except AttributeError:  # not built yet
        pass


def pytest_configure(config):
    """Probe PostgreSQL and Redis once, before anything connects. Without CI, a missing PostgreSQL
    (when no DATABASE_URL chose the database) means SQLite, and a missing Redis an in-memory broker
    and the Redis tests skipped; with CI=true pytest_sessionstart stops the run instead."""
    database = settings.DATABASES["default"]
    host = database.get("HOST") or "127.0.0.1"
    settings.POSTGRES_AVAILABLE = database["ENGINE"].endswith("postgresql") and (
        # A unix socket directory cannot be probed this way; the first connection will tell.
        host.startswith("/") or _reachable(host, int(database.get("PORT") or 5432))
    )
    redis_url = urlsplit(settings.TEST_REDIS_URL)
    settings.REDIS_AVAILABLE = _reachable(redis_url.hostname or "127.0.0.1", redis_url.port or 6379)
    if IN_CI:
        return
    if not settings.POSTGRES_AVAILABLE and "DATABASE_URL" not in os.environ:
        _default_database_use(settings.SQLITE_TEST_DATABASE)
        # As config/settings/base.py chooses for SQLite (one writer at a time).
        settings.CELERY_WORKER_CONCURRENCY = int(os.environ.get("CELERY_WORKER_CONCURRENCY", 1))
    if not settings.REDIS_AVAILABLE:
        from config import celery_app

        settings.CELERY_BROKER_URL = "memory://"
        celery_app.conf.broker_url = "memory://"  # in case the app has read its settings already


def pytest_sessionstart(session):
    if IN_CI:
        missing = [
            name
            for name, available in (
                ("PostgreSQL (the default database)", settings.POSTGRES_AVAILABLE),
                (f"Redis at {settings.TEST_REDIS_URL}", settings.REDIS_AVAILABLE),
            )
            if not available
        ]
        if missing:
            pytest.exit(f"CI=true and required services are missing: {', '.join(missing)}", returncode=3)


def pytest_report_header(config):
    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    return f"database: {engine}; redis: {'yes' if settings.REDIS_AVAILABLE else 'no'}; CI={IN_CI}"


def pytest_collection_modifyitems(config, items):
    if settings.REDIS_AVAILABLE:
        return
    skip = pytest.mark.skip(reason=f"Redis at {settings.TEST_REDIS_URL} is not running (required when CI=true)")
    for item in items:
        if "redis" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _index_dir(settings, tmp_path):
    """Each test publishes index files into its own folder and re-checks the version every call."""
    settings.KB_INDEX_DIR = tmp_path / "index"
    settings.KB_MODEL_DIR = tmp_path / "embedding-models"
    settings.KB_INDEX_POLL_SECONDS = 0
    yield
    # A test that switched model versions leaves this process on the base model again.
    from kb.embedders import process_model_set

    process_model_set("")


@pytest.fixture(autouse=True)
def _sites_cache_clear():
    """Sites are cached per process (chatbot.sites): a test's database, flushed after it, must not
    leave its sites (or their ids) to the next test."""
    from chatbot.sites import sites_cache_clear

    sites_cache_clear()
    yield
    sites_cache_clear()


SHARED_DATA = settings.BASE_DIR.parent / "shared" / "data"


@pytest.fixture
def banking77_train():
    """BANKING77's training file from ../shared/data (beside the checkout, as in CI)."""
    path = SHARED_DATA / "banking77" / "train.csv"
    if not path.exists():
        if IN_CI:
            pytest.fail(f"{path} is missing: the shared data must sit beside the checkout")
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture
def redis_client():
    """The test Redis database, emptied before and after the test."""
    import redis

    client = redis.Redis.from_url(settings.TEST_REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def llm_server(settings):
    """A local OpenAI-compatible server (tests/llm_server.py) with the LLM settings pointing at it: a short
    LLM_TIMEOUT (3 s) and LLM_REWRITE_TIMEOUT (1 s) keep failure tests quick. Script it with push()/default."""
    from chatbot.llm import system_roles_forget
    from tests.llm_server import LlmTestServer

    system_roles_forget()  # a new server may get an earlier one's port: probe it anew
    server = LlmTestServer(model="test-model").start()
    settings.LLM_BACKEND = "chatbot.llm.OpenAIChatLLM"
    settings.LLM_BASE_URL = server.base_url
    settings.LLM_API_KEY = "test-key"
    settings.LLM_MODEL = "test-model"
    settings.LLM_AZURE_API_VERSION = ""
    settings.LLM_TIMEOUT = 3.0
    settings.LLM_REWRITE_TIMEOUT = 1.0
    yield server
    server.stop()


@pytest.fixture
def editor_client(client):
    """A client logged in as a superuser named "editor" (every admin page, every permission)."""
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.create_superuser("editor", "editor@example.com", "pw-editor-123"))
    return client

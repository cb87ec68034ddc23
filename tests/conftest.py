"""Shared fixtures. PostgreSQL and Redis on 127.0.0.1 are used when present; with CI=true their
absence fails the run instead of skipping (config/settings/test.py picks the database)."""

from __future__ import annotations

import os

import pytest
from django.conf import settings

os.environ.setdefault("CHATBOT_WARM_UP", "0")

IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_sessionstart(session):
    if IN_CI:
        missing = [
            name
            for name, available in (
                ("PostgreSQL at 127.0.0.1:5432", settings.POSTGRES_AVAILABLE),
                ("Redis at 127.0.0.1:6379", settings.REDIS_AVAILABLE),
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
    skip = pytest.mark.skip(reason="Redis at 127.0.0.1:6379 is not running (required when CI=true)")
    for item in items:
        if "redis" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _index_dir(settings, tmp_path):
    """Each test publishes index files into its own folder and re-checks the version every call."""
    settings.KB_INDEX_DIR = tmp_path / "index"
    settings.KB_INDEX_POLL_SECONDS = 0
    yield


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
    from tests.llm_server import LlmTestServer

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

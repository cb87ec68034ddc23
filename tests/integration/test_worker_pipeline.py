"""A real Celery worker process on the real Redis embeds a batch; the web side answers from the
new index version without a restart."""

import os
import subprocess
import time
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings

from chatbot.management.commands.runstack import worker_command
from config.asgi import application
from kb import services
from kb.models import IndexVersion, Variant
from tests.factories import entries_create

pytestmark = [pytest.mark.redis, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.fixture
def worker(transactional_db, redis_client, tmp_path):
    """One Celery worker started with the command `make run` uses, on the test DB and Redis."""
    log = (tmp_path / "worker.log").open("w")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(),
        "KB_INDEX_DIR": str(settings.KB_INDEX_DIR),
        "KB_EMBED_BATCH_SIZE": "4",  # several batches for a handful of entries
    }
    process = subprocess.Popen(
        worker_command(settings.CELERY_TASK_DEFAULT_QUEUE),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=settings.BASE_DIR,
    )
    yield process
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()
    print((tmp_path / "worker.log").read_text()[-4000:])


def wait_for_version(newer_than: int, timeout: float = 120.0) -> IndexVersion:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        version = IndexVersion.objects.order_by("-id").first()
        if version is not None and version.pk > newer_than and not Variant.objects.filter(is_dirty=True).exists():
            return version
        time.sleep(0.2)
    raise AssertionError("the worker did not publish a new index version in time")


async def ask(text: str) -> dict:
    chat = WebsocketCommunicator(application, "/ws/chat/", headers=[(b"origin", b"http://localhost")])
    assert (await chat.connect())[0]
    await chat.receive_json_from()
    await chat.send_json_to({"type": "message", "id": str(uuid.uuid4()), "text": text})
    answer = await chat.receive_json_from(timeout=20)
    await chat.disconnect()
    return answer


async def test_worker_embeds_in_batches_and_chat_answers_from_each_new_version(worker):
    entries = await database_sync_to_async(entries_create)()
    first = await database_sync_to_async(wait_for_version)(0)
    total = await database_sync_to_async(Variant.objects.count)()
    assert total > 4 and first.vector_count == total and first.entry_count == len(entries)
    log = (settings.KB_INDEX_DIR.parent / "worker.log").read_text()
    assert log.count("'remaining': 0") >= 1 and "'remaining': " in log.replace("'remaining': 0", "")

    answer = await ask("where is my parcel?")
    assert (answer["source"], answer["entry_id"]) == ("faq", entries[0].id)

    # A new entry saved by an editor becomes answerable once the worker publishes again.
    before = await ask("Do you deliver to Canada?")
    assert before["source"] == "fallback"
    shipping = await database_sync_to_async(services.entry_create)(
        question="Do you ship internationally?",
        answer="Yes, to 40 countries including Canada.",
        variants=["do you deliver to canada", "international shipping"],
    )
    second = await database_sync_to_async(wait_for_version)(first.pk)
    assert second.entry_count == len(entries) + 1
    after = await ask("Do you deliver to Canada?")
    assert (after["source"], after["entry_id"]) == ("faq", shipping.id)

    # Unpublished entries leave the answers, and the next version leaves them out.
    await database_sync_to_async(services.entry_update)(entry=shipping, is_published=False)
    third = await database_sync_to_async(wait_for_version)(second.pk)
    assert third.entry_count == len(entries)
    assert (await ask("Do you deliver to Canada?"))["source"] == "fallback"

"""A real Celery worker process on the real Redis embeds a batch; the web side answers from the
new index version without a restart."""

import time
import uuid
from pathlib import Path

import psutil
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from config.asgi import application
from kb import services
from kb.models import Variant
from tests.chatbot.conftest import ORIGIN
from tests.factories import entries_create
from tests.integration.workers import start_worker, stop_worker, wait_for_version

pytestmark = [pytest.mark.redis, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(transactional_db, redis_client, tmp_path):
    """One Celery worker on the test database and Redis, with small batches."""
    log_path = tmp_path / "worker.log"
    process = start_worker(log_path, KB_EMBED_BATCH_SIZE="4")  # several batches for a handful of entries
    yield log_path
    stop_worker(process)
    print(log_path.read_text()[-4000:])


async def ask(text: str) -> dict:
    chat = WebsocketCommunicator(application, "/ws/chat/", headers=ORIGIN)
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
    log = worker.read_text()
    assert log.count("'remaining': 0") >= 1 and "'remaining': " in log.replace("'remaining': 0", "")

    answer = await ask("where is my parcel?")
    assert (answer["source"], answer["entry_id"]) == ("faq", entries[0].id)

    # A new entry saved by an editor becomes answerable once the worker publishes again.
    before = await ask("Do you deliver to Canada?")
    assert before["source"] == "handoff"
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
    assert (await ask("Do you deliver to Canada?"))["source"] == "handoff"


def test_a_worker_without_the_embedding_queue_loads_no_model(redis_client, tmp_path, settings):
    log_path = tmp_path / "worker.log"
    process = start_worker(log_path, queues=[settings.CELERY_TASK_DEFAULT_QUEUE])
    try:
        deadline = time.monotonic() + 60
        while " ready." not in log_path.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        # Pool processes would start loading at once (worker_process_init); give them the time to show it.
        time.sleep(3)
        worker = psutil.Process(process.pid)
        processes = [worker, *worker.children(recursive=True)]
        assert len(processes) > 1  # the pool's processes are there
        for each in processes:
            maps = Path(f"/proc/{each.pid}/maps").read_text()
            assert "libtorch" not in maps and "onnxruntime" not in maps, f"process {each.pid} loaded a model"
    finally:
        stop_worker(process)

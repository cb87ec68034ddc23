"""The embedding tasks: their own queue, the fan-out decided by the worker that runs them, and the
models loaded only by workers that consume the embedding queue."""

from types import SimpleNamespace

import pytest

from config import celery_app
from kb import services, tasks
from kb.services import EmbedBatchResult

pytestmark = pytest.mark.django_db


def fake_worker(*queues: str, concurrency: int) -> SimpleNamespace:
    """What celeryd_after_setup hands over: the worker, with the queues it consumes and its pool size."""
    consume_from = {name: None for name in queues}
    return SimpleNamespace(
        app=SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from=consume_from))),
        concurrency=concurrency,
    )


@pytest.fixture
def sent(monkeypatch):
    """The kb_refresh tasks enqueued (their keyword arguments), instead of sending them."""
    calls = []
    monkeypatch.setattr(tasks.kb_refresh, "delay", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(tasks, "_worker_role", None)
    return calls


def batch(*, selected: int, remaining: int):
    return lambda **_kwargs: EmbedBatchResult(selected=selected, embedded=selected, stale=0, remaining=remaining)


def test_embedding_is_routed_to_its_own_queue(settings):
    assert settings.CELERY_EMBED_QUEUE != settings.CELERY_TASK_DEFAULT_QUEUE
    assert celery_app.amqp.router.route({}, tasks.kb_refresh.name)["queue"].name == settings.CELERY_EMBED_QUEUE
    assert celery_app.amqp.router.route({}, "kb.tasks.another")["queue"].name == settings.CELERY_TASK_DEFAULT_QUEUE
    # A worker started without --queues consumes both.
    assert {settings.CELERY_TASK_DEFAULT_QUEUE, settings.CELERY_EMBED_QUEUE} <= set(celery_app.amqp.queues)


def test_a_request_fans_out_to_the_pool_of_the_worker_running_it(settings, monkeypatch, sent):
    settings.CELERY_WORKER_CONCURRENCY = 2  # the web side's idea; the worker's own pool size wins
    tasks._worker_role_record(sender="w", instance=fake_worker(settings.CELERY_EMBED_QUEUE, concurrency=3))
    monkeypatch.setattr(services, "variants_embed_batch", batch(selected=4, remaining=10))
    assert tasks.kb_refresh() == {"embedded": 4, "remaining": 10}
    assert sent == [{"chain": True}] * 3
    # A chain only continues itself.
    sent.clear()
    tasks.kb_refresh(chain=True)
    assert sent == [{"chain": True}]
    # Every remaining row locked by other chains' batches: this one stops, they finish the job.
    sent.clear()
    monkeypatch.setattr(services, "variants_embed_batch", batch(selected=0, remaining=10))
    tasks.kb_refresh()
    assert sent == []


def test_outside_a_worker_the_pool_size_comes_from_the_settings(settings, monkeypatch, sent):
    settings.CELERY_WORKER_CONCURRENCY = 2
    monkeypatch.setattr(services, "variants_embed_batch", batch(selected=1, remaining=1))
    tasks.kb_refresh()
    assert sent == [{"chain": True}] * 2


def test_only_workers_of_the_embedding_queue_load_the_model_and_sweep(settings, monkeypatch, sent):
    loaded, threads = [], []

    class Embedder:
        def encode(self, texts):
            loaded.append(texts)

    # The worker loads the active model version (kb.embedding_models), not a fixed one.
    monkeypatch.setattr("kb.embedding_models.active_embedder", lambda: (None, Embedder()))
    monkeypatch.setattr("kb.embedders.math_threads_set", threads.append)
    monkeypatch.setattr("os.cpu_count", lambda: 4)

    tasks._worker_role_record(sender="w", instance=fake_worker(settings.CELERY_TASK_DEFAULT_QUEUE, concurrency=2))
    tasks._load_embedder()
    tasks._sweep_on_start()
    assert (loaded, threads, sent) == ([], [], [])

    tasks._worker_role_record(
        sender="w", instance=fake_worker(settings.CELERY_TASK_DEFAULT_QUEUE, settings.CELERY_EMBED_QUEUE, concurrency=2)
    )
    tasks._load_embedder()
    tasks._sweep_on_start()
    # The cores are shared between the pool processes; the start-up sweep is one request.
    assert (loaded, threads, sent) == ([["warm up"]], [2], [{}])

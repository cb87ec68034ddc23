"""Prometheus metrics (chatbot/metrics.py) at /metrics: who may read them, that every named metric is
there and moves when customers are answered, and multiprocess mode adding up web processes."""

import os
import subprocess
import sys
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from chatbot import metrics
from config.asgi import application
from kb.models import IndexVersion
from kb.tasks import kb_refresh
from tests.chatbot.conftest import ORIGIN

NAMED = {
    "chatbot_answer_seconds",
    "chatbot_decisions",
    "chatbot_websocket_connections",
    "chatbot_rate_limits_hit",
    "chatbot_embed_queue_depth",
    "chatbot_index_version",
}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(**request) -> dict[tuple[str, tuple], float]:
    response = Client().get("/metrics", **request)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return samples(response.content.decode())


@pytest.mark.django_db
@pytest.mark.redis
def test_every_named_metric_is_exposed(redis_client):
    metrics.rate_limit_hit("messages")
    families = {family.name for family in text_string_to_metric_families(Client().get("/metrics").content.decode())}
    assert NAMED <= families


async def test_answering_moves_latency_and_decisions_by_source(shop):
    before = await database_sync_to_async(scrape)()
    chat = WebsocketCommunicator(application, "/ws/chat/", headers=ORIGIN)
    assert (await chat.connect())[0]
    await chat.receive_json_from()  # session
    for text in ("where is my parcel?", "What will the weather be like on Mars tomorrow?", "where is my parcel?"):
        await chat.send_json_to({"type": "message", "id": str(uuid.uuid4()), "text": text})
        await chat.receive_json_from(timeout=20)
    await chat.disconnect()
    after = await database_sync_to_async(scrape)()

    def moved(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0)

    assert moved("chatbot_answer_seconds_count", source="faq") == 2
    assert moved("chatbot_answer_seconds_count", source="handoff") == 1
    assert moved("chatbot_answer_seconds_count", source="llm") == 0
    assert moved("chatbot_decisions_total", kind="faq") == 2 and moved("chatbot_decisions_total", kind="handoff") == 1
    # Seconds, not milliseconds: two FAQ answers on a four-entry KB take well under a minute.
    assert 0 < moved("chatbot_answer_seconds_sum", source="faq") < 60
    assert moved("chatbot_answer_seconds_bucket", source="faq", le="+Inf") == 2


@pytest.mark.django_db
def test_connections_and_rate_limits_follow_the_helpers():
    before = scrape()
    metrics.connection_opened()
    metrics.connection_opened()
    metrics.connection_closed()
    metrics.rate_limit_hit("connections_per_ip")
    metrics.rate_limit_hit("connections_per_ip")
    metrics.rate_limit_hit("messages")
    after = scrape()
    connections = ("chatbot_websocket_connections", ())
    assert after[connections] - before[connections] == 1
    hits = lambda limit, values: values.get(("chatbot_rate_limits_hit_total", (("limit", limit),)), 0)  # noqa: E731
    assert hits("connections_per_ip", after) - hits("connections_per_ip", before) == 2
    assert hits("messages", after) - hits("messages", before) == 1
    metrics.connection_closed()


@pytest.mark.django_db
@pytest.mark.redis
def test_queue_depth_and_index_version_are_read_when_scraped(redis_client, shop):
    published = IndexVersion.objects.order_by("-id").first()
    assert scrape()[("chatbot_index_version", ())] == published.id
    # The shop's saves queued their jobs; no worker runs here, so they wait, as behind a busy worker.
    redis_client.delete(settings.CELERY_EMBED_QUEUE)
    assert scrape()[("chatbot_embed_queue_depth", ())] == 0
    for _ in range(3):
        kb_refresh.apply_async()
    assert redis_client.llen(settings.CELERY_EMBED_QUEUE) == 3
    assert scrape()[("chatbot_embed_queue_depth", ())] == 3


@pytest.mark.django_db
def test_an_unreachable_broker_leaves_the_queue_depth_out(settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    values = scrape()
    assert ("chatbot_embed_queue_depth", ()) not in values and ("chatbot_index_version", ()) in values


@pytest.mark.django_db
@pytest.mark.parametrize(
    "request_kwargs, allowed_ips, token, status",
    [
        ({"REMOTE_ADDR": "127.0.0.1"}, ["127.0.0.1", "::1"], "", 200),
        ({"REMOTE_ADDR": "::1"}, ["127.0.0.1", "::1"], "", 200),
        ({"REMOTE_ADDR": "203.0.113.9"}, ["127.0.0.1", "::1"], "", 403),
        ({"REMOTE_ADDR": "10.1.2.3"}, ["127.0.0.1", "10.0.0.0/8"], "", 200),
        # Through a reverse proxy on the same host an outsider looks local: an address is not enough.
        ({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9"}, ["127.0.0.1"], "", 403),
        ({"REMOTE_ADDR": "127.0.0.1", "HTTP_FORWARDED": "for=203.0.113.9"}, ["127.0.0.1"], "", 403),
        ({"REMOTE_ADDR": "203.0.113.9", "HTTP_AUTHORIZATION": "Bearer s3cret-scrape"}, [], "s3cret-scrape", 200),
        (
            {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9", "HTTP_AUTHORIZATION": "Bearer s3cret"},
            ["127.0.0.1"],
            "s3cret",
            200,
        ),
        ({"REMOTE_ADDR": "203.0.113.9", "HTTP_AUTHORIZATION": "Bearer wrong"}, [], "s3cret-scrape", 403),
        ({"REMOTE_ADDR": "203.0.113.9", "HTTP_AUTHORIZATION": "Bearer "}, [], "", 403),
    ],
)
def test_who_may_read_metrics(settings, request_kwargs, allowed_ips, token, status):
    settings.METRICS_ALLOWED_IPS = allowed_ips
    settings.METRICS_TOKEN = token
    response = Client().get("/metrics", **request_kwargs)
    assert response.status_code == status
    assert (b"chatbot_decisions_total" in response.content) == (status == 200)


@pytest.mark.django_db
def test_metrics_answer_hosts_outside_allowed_hosts_and_over_plain_http(settings):
    # A scraper reaches a container by its name or address, which DJANGO_ALLOWED_HOSTS does not list.
    settings.ALLOWED_HOSTS = ["shop.example"]
    settings.SECURE_SSL_REDIRECT = True
    assert Client().get("/metrics", HTTP_HOST="web:8000").status_code == 200
    assert Client().get("/admin/", HTTP_HOST="web:8000").status_code == 400


RECORD = """
import os, sys, django
django.setup()
from chatbot import metrics
for _ in range(int(sys.argv[1])):
    metrics.connection_opened()
metrics.rate_limit_hit("messages")
metrics.answer_observe("faq", 0.02)
metrics.decision_count("faq")
print("recorded", flush=True)
if sys.argv[2] == "stay":
    sys.stdin.read()  # a live web process, until the test closes its stdin
"""


@pytest.mark.django_db
def test_multiprocess_mode_adds_up_the_web_processes(tmp_path, monkeypatch):
    folder = tmp_path / "prometheus"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
        "CHATBOT_WARM_UP": "0",
    }

    def process(sockets: int, mode: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", RECORD, str(sockets), mode],
            env=env,
            cwd=settings.BASE_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    alive = [process(2, "stay"), process(1, "stay")]
    exited = process(4, "exit")
    try:
        for each in [*alive, exited]:
            assert each.stdout.readline().strip() == "recorded"
        exited.wait(timeout=30)
        monkeypatch.setattr(metrics, "MULTIPROC_DIR", str(folder))
        body, _ = metrics.metrics_render()
        values = samples(body.decode())
        # Open sockets: the live processes' only (the one that exited took its 4 along).
        assert values[("chatbot_websocket_connections", ())] == 3
        # Counts: every process's, the exited one's too.
        assert values[("chatbot_rate_limits_hit_total", (("limit", "messages"),))] == 3
        assert values[("chatbot_decisions_total", (("kind", "faq"),))] == 3
        assert values[("chatbot_answer_seconds_count", (("source", "faq"),))] == 3
        assert ("chatbot_index_version", ()) in values
    finally:
        for each in alive:
            each.communicate(timeout=30)

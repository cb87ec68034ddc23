"""/healthz (chatbot/health.py): database, Redis and index state; 503 when a dependency is down."""

import pytest
from django.db import OperationalError
from django.test import Client

from kb.models import IndexVersion

pytestmark = [pytest.mark.django_db]


@pytest.mark.redis
def test_healthy_with_the_published_index(shop):
    response = Client().get("/healthz")
    published = IndexVersion.objects.order_by("-id").first()
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "redis": "ok",
        "index_version": published.id,
        "vectors": published.vector_count,
        "index_loaded": None,  # this test process runs no background index loader
    }


@pytest.mark.redis
def test_no_index_yet_is_reported_not_unhealthy():
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["index_version"]) == ("ok", None)


def test_redis_down_is_503_without_saying_where_it_is(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = Client().get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy" and response.json()["redis"] == "unavailable"
    assert "127.0.0.1:1" not in response.content.decode()


@pytest.mark.redis
def test_database_down_is_503(monkeypatch):
    def refused(*args, **kwargs):
        raise OperationalError("connection to server at 10.0.0.5 refused")

    monkeypatch.setattr(IndexVersion.objects, "order_by", refused)
    response = Client().get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["database"], body["redis"], body["index_version"]) == (
        "unhealthy",
        "unavailable",
        "ok",
        None,
    )
    assert "10.0.0.5" not in response.content.decode()


@pytest.mark.redis
def test_probes_answer_hosts_outside_allowed_hosts_and_over_plain_http(settings):
    # docker-compose's healthcheck asks 127.0.0.1:8000, a deployment allows only its own name, and
    # production redirects plain HTTP to HTTPS: the probe must still get its answer.
    settings.ALLOWED_HOSTS = ["shop.example"]
    settings.SECURE_SSL_REDIRECT = True
    assert Client().get("/healthz", HTTP_HOST="127.0.0.1:8000").status_code == 200
    assert Client().get("/readyz", HTTP_HOST="10.0.3.7:8000").status_code == 503  # no index loader here
    assert Client().get("/", HTTP_HOST="127.0.0.1:8000").status_code == 400
    assert Client().get("/", HTTP_HOST="shop.example").status_code == 301


def test_not_ready_is_logged_as_information_not_as_a_server_error(caplog):
    """Every start-up answers its readiness probes 503 until the index is loaded; those lines were
    logged at ERROR by django.request, which alerting reads as a failure."""
    import logging

    with caplog.at_level(logging.INFO):
        response = Client().get("/readyz")
    assert response.status_code == 503 and response.json()["ready"] is False
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert not [r for r in records if r[1] >= logging.WARNING], records
    assert ("chatbot.views", logging.INFO, f"not ready: {response.json()['reason']}") in records

"""Prometheus metrics of the chat, served at /metrics (chatbot.views.metrics).

Recorded as things happen (helpers below): answer latency by reply source, decisions by kind, open
websockets, rate limits hit. Read when scraped (:class:`_ScrapeTimeCollector`): the embedding
queue's length in the broker and the published index version, so they are right however many
workers there are, and no Celery process has to serve or share anything.

Several web processes share one port (WEB_CONCURRENCY) and a scrape reaches any one of them: with
``PROMETHEUS_MULTIPROC_DIR`` set (`make run` and docker-compose set it for the web processes) each
process writes its numbers to files there and the one scraped adds them all up (prometheus_client's
multiprocess mode). The folder must be emptied before the processes start (`make run` does; in
docker-compose it is a tmpfs) and must not be shared between hosts or containers: the open-socket
gauge drops the files of processes that no longer run, found by pid.
"""

from __future__ import annotations

import glob
import logging
import os

from django.conf import settings
from kombu import Connection
from kombu.exceptions import ChannelError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

from chatbot.health import index_published

logger = logging.getLogger(__name__)

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if MULTIPROC_DIR:
    # prometheus_client writes its files there from the first metric on.
    os.makedirs(MULTIPROC_DIR, exist_ok=True)

SOURCES = ("faq", "clarify", "llm", "handoff")
KINDS = ("faq", "clarify", "llm", "handoff")

_registry = CollectorRegistry()

ANSWER_SECONDS = Histogram(
    "chatbot_answer_seconds",
    "Time to answer a customer's message (or picked suggestion): from answering's start to the stored reply.",
    ["source"],
    # FAQ replies take milliseconds, LLM ones seconds (up to LLM_TIMEOUT).
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60),
    registry=_registry,
)
DECISIONS = Counter(
    "chatbot_decisions",
    "Customer messages decided, by the pipeline's decision (faq, clarify, llm, handoff).",
    ["kind"],
    registry=_registry,
)
CONNECTIONS = Gauge(
    "chatbot_websocket_connections",
    "Chat websockets open now.",
    # Summed over the web processes that are alive (a crashed one's sockets are gone).
    multiprocess_mode="livesum",
    registry=_registry,
)
RATE_LIMITS_HIT = Counter(
    "chatbot_rate_limits_hit",
    "Frames, messages or connections refused by flood control, by limit.",
    ["limit"],
    registry=_registry,
)
# Every series exists from the start, at 0, so rates and alerts work before the first of each.
for _source in SOURCES:
    ANSWER_SECONDS.labels(_source)
for _kind in KINDS:
    DECISIONS.labels(_kind)


def connection_opened() -> None:
    """Count a chat websocket as open (call once per accepted socket)."""
    CONNECTIONS.inc()


def connection_closed() -> None:
    """Count a chat websocket as closed (call once per socket that :func:`connection_opened` counted)."""
    CONNECTIONS.dec()


def rate_limit_hit(limit: str) -> None:
    """Count one refusal by the flood-control limit named ``limit`` (e.g. "messages", "connections")."""
    RATE_LIMITS_HIT.labels(limit).inc()


def answer_observe(source: str, seconds: float) -> None:
    """Record how long a reply from ``source`` (faq, clarify, llm, handoff) took."""
    ANSWER_SECONDS.labels(source).observe(seconds)


def decision_count(kind: str) -> None:
    """Count one customer message decided as ``kind`` (faq, clarify, llm, handoff)."""
    DECISIONS.labels(kind).inc()


def embed_queue_depth() -> int | None:
    """Jobs waiting in the embedding queue (CELERY_EMBED_QUEUE) in the broker; None if the broker
    cannot be asked."""
    try:
        with Connection(
            settings.CELERY_BROKER_URL, connect_timeout=2, transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS
        ) as connection:
            connection.ensure_connection(max_retries=0)  # one try: a scrape must not wait on retries
            try:
                return connection.default_channel.queue_declare(
                    queue=settings.CELERY_EMBED_QUEUE, passive=True
                ).message_count
            except ChannelError:  # the broker drops an empty queue: nothing waits
                return 0
    except Exception as error:  # noqa: BLE001 - a scrape reports what it can; the series goes missing
        logger.warning("metrics: could not read the embedding queue's length: %s", error)
        return None


class _ScrapeTimeCollector:
    """Values read when Prometheus scrapes, from the broker and the database."""

    def describe(self):
        # Registering must not query anything (it happens at import).
        return []

    def collect(self):
        depth = embed_queue_depth()
        if depth is not None:
            yield GaugeMetricFamily(
                "chatbot_embed_queue_depth", "Embedding jobs waiting in the broker (CELERY_EMBED_QUEUE).", value=depth
            )
        try:
            index = index_published()
        except Exception as error:  # noqa: BLE001 - the database being down shows as a missing series
            logger.warning("metrics: could not read the published index version: %s", error)
            return
        yield GaugeMetricFamily(
            "chatbot_index_version",
            "The published search index version (0: none yet); web processes load it within KB_INDEX_POLL_SECONDS.",
            value=index.version or 0,
        )


_scrape_time = _ScrapeTimeCollector()
_registry.register(_scrape_time)


def _dead_processes_forget(folder: str) -> None:
    """Drop the live-gauge files of web processes that have exited (uvicorn restarts a crashed
    worker without telling anyone), so their sockets stop counting as open."""
    for path in glob.glob(os.path.join(folder, "gauge_live*_*.db")):
        pid = int(path.rsplit("_", 1)[1].removesuffix(".db"))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, folder)
        except PermissionError:  # alive, someone else's
            pass


def metrics_render() -> tuple[bytes, str]:
    """The Prometheus text exposition of every metric (of every web process in multiprocess mode),
    and its content type."""
    if not MULTIPROC_DIR:
        return generate_latest(_registry), CONTENT_TYPE_LATEST
    _dead_processes_forget(MULTIPROC_DIR)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)
    registry.register(_scrape_time)
    return generate_latest(registry), CONTENT_TYPE_LATEST

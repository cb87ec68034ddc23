"""What /healthz reports: the database, Redis and the search index, each checked cheaply (one
indexed query, one PING with a one-second timeout, a reference read).

Healthy means this web process can reach what it serves from: the database (every answer reads
and stores) and Redis (the channel layer, the broker of the embedding jobs). A knowledge base with no
index published yet is reported, not unhealthy: restarting a web process would not publish one
(/readyz says whether this process can answer).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import DatabaseError

from kb.models import IndexVersion
from kb.selectors import current_index

logger = logging.getLogger(__name__)

_redis_clients: dict[str, redis.Redis] = {}
_redis_lock = threading.Lock()


@dataclass(frozen=True)
class IndexState:
    """The published index: its version (None before the first) and how many phrasings it holds."""

    version: int | None
    vectors: int


def index_published() -> IndexState:
    """The newest published index version, from the database (raises DatabaseError when it is down)."""
    latest = IndexVersion.objects.order_by("-id").values("id", "vector_count").first()
    return IndexState(version=latest["id"], vectors=latest["vector_count"]) if latest else IndexState(None, 0)


def _redis_client(url: str) -> redis.Redis:
    # One client (and connection pool) per process: a health check every few seconds must not
    # open a connection each time.
    with _redis_lock:
        client = _redis_clients.get(url)
        if client is None:
            client = _redis_clients[url] = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        return client


def redis_reachable() -> bool:
    """Whether Redis (REDIS_URL: channel layer and broker) answers a PING within a second."""
    try:
        return bool(_redis_client(settings.REDIS_URL).ping())
    except (redis.RedisError, OSError) as error:
        logger.warning("health: Redis unreachable: %s", error)
        return False


def health_report() -> tuple[bool, dict]:
    """Whether this web process is healthy, and the report /healthz returns.

    Errors are logged here, not returned: the endpoint is public and host names stay inside."""
    try:
        index = index_published()
        database = True
    except DatabaseError as error:
        logger.warning("health: database unreachable: %s", error)
        index, database = None, False
    cache = redis_reachable()
    loaded = current_index.get() if current_index.background else None  # a reference read, never a load
    healthy = database and cache
    report = {
        "status": "ok" if healthy else "unhealthy",
        "database": "ok" if database else "unavailable",
        "redis": "ok" if cache else "unavailable",
        "index_version": index.version if index else None,
        "vectors": index.vectors if index else 0,
        # The version this process serves (None: none yet, or a process without the background loader).
        "index_loaded": loaded.version if loaded else None,
    }
    return healthy, report

"""Flood control for the chat socket.

Two rates per socket (every frame, and messages), each a token bucket with a burst (GCRA: one
timestamp per bucket, no timer), kept by the socket's own consumer: a socket lives on one web
process for its whole life, so its buckets need no shared store, and checking them costs no round
trip (one per frame used to be a Redis script call, a sixth of a web process's time under load).

What spans sockets is kept in Redis, so that it holds across web processes: the cap on the sockets
open from one client address (a sorted set of socket ids, each scored with the time it lapses
unless its socket refreshes it: a web process that dies leaves nothing behind for longer than that)
and the ban of an address one of whose sockets kept flooding.

Redis is the limiter's memory, not a dependency of the chat: while it is unreachable every
connection is let through (and a warning logged), as answering itself goes on without Redis.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from dataclasses import dataclass

import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

KEY_PREFIX = "chatbot:flood"
# A socket's entry in its address's set lapses this long after its last refresh; a live socket
# refreshes it every third of that.
CONNECTION_LEASE_SECONDS = 300
# How soon a refused connection is told to try again: sockets close at the customers' pace.
CONNECTION_RETRY_MS = 10_000
# After Redis failed, how long to let every connection through before asking it again (otherwise
# each new socket would wait for a connect attempt).
REDIS_RETRY_SECONDS = 2.0

# KEYS[1]: the address's set, KEYS[2]: the address's ban; ARGV: socket id, cap, lease (ms). Returns
# 1 (let through), 0 (over the cap) or minus the ban's remaining milliseconds. A socket already in
# the set (a refresh) is always let through: a ban keeps new sockets out, and an open one's place
# must not lapse meanwhile.
_CONNECTION_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local banned = redis.call('PTTL', KEYS[2])
  if banned > 0 then return -banned end
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


@dataclass(frozen=True)
class Verdict:
    """Whether a frame or connection may go on; if not, which limit said no and when to retry."""

    allowed: bool
    limit: str = ""  # "frames", "messages", "connections" or "flood" (the address is banned)
    retry_after_ms: int = 0


ALLOWED = Verdict(allowed=True)


@dataclass(frozen=True)
class Rate:
    """A token bucket: ``burst`` at once, then one token per ``interval_ms``."""

    name: str
    interval_ms: int
    burst: int


def frame_rate() -> Rate:
    """Every frame a socket sends (CHATBOT_FRAME_BURST, CHATBOT_FRAMES_PER_SECOND)."""
    return Rate("frames", max(1, round(1000 / settings.CHATBOT_FRAMES_PER_SECOND)), settings.CHATBOT_FRAME_BURST)


def message_rate() -> Rate:
    """Messages and choices (CHATBOT_MESSAGE_BURST, CHATBOT_MESSAGES_PER_MINUTE)."""
    return Rate(
        "messages", max(1, round(60_000 / settings.CHATBOT_MESSAGES_PER_MINUTE)), settings.CHATBOT_MESSAGE_BURST
    )


class SocketRates:
    """One socket's buckets: every frame (:func:`frame_rate`) and messages (:func:`message_rate`)."""

    def __init__(self):
        self._due_ms: dict[str, float] = {}  # per bucket, its "theoretical arrival time"

    def charge(self, *, message: bool, now: float | None = None) -> Verdict:
        """Charge one frame (and one message, if it is one). A frame is allowed while its bucket's
        arrival time stays within burst x interval of now. The first bucket that refuses ends the
        check: the ones after it are not charged, the ones before it are (a refused message still
        was a frame). ``now``: time.monotonic() seconds (tests pass their own)."""
        now_ms = (time.monotonic() if now is None else now) * 1000
        for rate in (frame_rate(), message_rate()) if message else (frame_rate(),):
            due = max(self._due_ms.get(rate.name, now_ms), now_ms) + rate.interval_ms
            wait = due - now_ms - rate.interval_ms * rate.burst
            if wait > 0:
                return Verdict(allowed=False, limit=rate.name, retry_after_ms=max(1, math.ceil(wait)))
            self._due_ms[rate.name] = due
        return ALLOWED


class FloodControl:
    """The limiter of one event loop (redis.asyncio connections belong to the loop that made them)."""

    def __init__(self, url: str):
        self._redis = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._connection = self._redis.register_script(_CONNECTION_SCRIPT)
        self._down_until = 0.0

    async def connection_open(self, address: str, socket_id: str) -> Verdict:
        """Count this socket against its address's cap (or refresh it); refused over the cap, and
        while the address is banned for flooding."""
        if not address:
            return ALLOWED
        # No cap (0) still checks the ban; the set is kept, but never full.
        cap = settings.CHATBOT_CONNECTIONS_PER_IP or 2**31
        keys = [f"{KEY_PREFIX}:connections:{address}", f"{KEY_PREFIX}:ban:{address}"]
        result = await self._call(self._connection, keys, [socket_id, cap, CONNECTION_LEASE_SECONDS * 1000])
        if result is None or int(result) == 1:
            return ALLOWED
        if int(result) < 0:
            return Verdict(allowed=False, limit="flood", retry_after_ms=-int(result))
        return Verdict(allowed=False, limit="connections", retry_after_ms=CONNECTION_RETRY_MS)

    async def address_ban(self, address: str) -> None:
        """Refuse new sockets from ``address`` for CHATBOT_FLOOD_BAN_SECONDS (one of its sockets
        kept flooding and was closed)."""
        seconds = settings.CHATBOT_FLOOD_BAN_SECONDS
        if not address or seconds <= 0 or self._redis_away():
            return
        try:
            await self._redis.set(f"{KEY_PREFIX}:ban:{address}", 1, px=int(seconds * 1000))
        except (TimeoutError, RedisError, OSError) as error:
            self._went_away(error)

    async def connection_close(self, address: str, socket_id: str) -> None:
        """This socket no longer counts against its address."""
        if not address or self._redis_away():
            return
        try:
            await self._redis.zrem(f"{KEY_PREFIX}:connections:{address}", socket_id)
        except (TimeoutError, RedisError, OSError) as error:
            self._went_away(error)

    async def _call(self, script, keys: list[str], args: list):
        if self._redis_away():
            return None
        try:
            return await script(keys=keys, args=args)
        except (TimeoutError, RedisError, OSError) as error:
            self._went_away(error)
            return None

    def _redis_away(self) -> bool:
        return time.monotonic() < self._down_until

    def _went_away(self, error: Exception) -> None:
        self._down_until = time.monotonic() + REDIS_RETRY_SECONDS
        logger.warning("flood control lets everything through for %.0f s: Redis failed: %s", REDIS_RETRY_SECONDS, error)


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FloodControl] = weakref.WeakKeyDictionary()


def flood_control() -> FloodControl:
    """The running event loop's limiter, on CHATBOT_FLOOD_REDIS_URL."""
    loop = asyncio.get_running_loop()
    limiter = _by_loop.get(loop)
    if limiter is None:
        limiter = _by_loop[loop] = FloodControl(settings.CHATBOT_FLOOD_REDIS_URL)
    return limiter

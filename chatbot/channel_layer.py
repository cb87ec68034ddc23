"""The Redis channel layer, made to outlive Redis hiccups.

channels_redis waits for a consumer's messages with a blocking BZPOPMIN. When that read fails (Redis
restarting, a dropped connection, a read timeout) the exception escapes into Channels'
``await_many_dispatch`` and tears the consumer down: every socket of the process closes with 1011 at
once and every customer reconnects together. Answering a customer does not need Redis at all, so a
consumer here keeps its socket and waits for Redis to come back instead, and its group memberships
are added again once it is back.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import time

from channels_redis.core import RedisChannelLayer
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0


# KEYS[1]: a group's sorted set; ARGV: the sender's channel, the oldest score still a member.
# Returns the other members, after dropping the expired ones.
_GROUP_OTHERS_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, tonumber(ARGV[2]))
local others = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if member ~= ARGV[1] then others[#others + 1] = member end
end
return others
"""
_GROUP_OTHERS_SHA = hashlib.sha1(_GROUP_OTHERS_SCRIPT.encode()).hexdigest()  # noqa: S324 - how Redis names scripts

POOL_SIZE = 100
POOL_WAIT_SECONDS = 20.0


class ResilientRedisChannelLayer(RedisChannelLayer):
    """A RedisChannelLayer whose ``receive`` retries with backoff when Redis cannot be reached, and
    which restores this process's group memberships when Redis comes back empty (a restarted Redis
    keeps no groups: without this, a socket would silently stop getting its conversation's events)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._memberships: dict[str, set[str]] = {}
        # How many times this process lost Redis: an announcement sent meanwhile may be lost, so a
        # consumer that relies on one (chatbot.consumers: a socket alone in its conversation) stops
        # relying on it once this changes.
        self.outages = 0
        self._closed: dict[str, float] = {}
        self.receive_buffer = _ReceiveBuffers(self.receive_buffer.default_factory, self._closed)

    def channel_closed(self, channel: str) -> None:
        """The consumer of ``channel`` is gone: drop what was buffered for it, and anything that
        still arrives for it. channels_redis buffers each message it pops for a channel of this
        process until that channel's consumer reads it; a consumer that has left never does, and its
        buffer stayed for good (seen as ~1 MB a minute per process in the soak: each conversation's
        last exchange event, sent to its own group just as the customer left)."""
        now = time.monotonic()
        self._closed[channel] = now
        self.receive_buffer.pop(channel, None)
        # Messages expire after ``expiry`` seconds in Redis: later ones cannot arrive any more.
        for name, closed_at in list(self._closed.items()):
            if now - closed_at > self.expiry * 2:
                del self._closed[name]

    def create_pool(self, index):
        """A pool that makes a caller wait for a free connection instead of failing: hundreds of
        sockets connecting at once each join a group, and redis-py's plain pool raised "Too many
        connections" past 100 (seen at 500 customers)."""
        host = dict(self.hosts[index])
        if "address" not in host:
            return super().create_pool(index)
        address = host.pop("address")
        host.setdefault("max_connections", POOL_SIZE)
        host.setdefault("timeout", POOL_WAIT_SECONDS)
        return BlockingConnectionPool.from_url(address, **host)

    async def group_add(self, group, channel):
        """Join ``group``; remembered first, so a failure here is repaired when Redis is back."""
        self._memberships.setdefault(channel, set()).add(group)
        await super().group_add(group, channel)

    async def group_discard(self, group, channel):
        """Leave ``group`` (forgotten locally even when Redis cannot be told)."""
        groups = self._memberships.get(channel)
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self._memberships[channel]
        await super().group_discard(group, channel)

    async def group_send_others(self, group: str, message: dict, *, sender: str) -> int:
        """Send ``message`` to every channel of ``group`` except ``sender``; returns how many.

        Almost every conversation has one socket, its sender. channels_redis's group_send costs
        four Redis round trips and delivers the event back to the sender, which then decodes and
        drops it; this reads the other members in one script call (half the client CPU of a
        MULTI/EXEC pipeline) and usually stops there."""
        connection = self.connection(self.consistent_hash(group))
        args = (1, self._group_key(group), sender, int(time.time()) - self.group_expiry)
        try:
            members = await connection.evalsha(_GROUP_OTHERS_SHA, *args)
        except NoScriptError:  # a Redis that has not seen the script yet (or was restarted)
            members = await connection.eval(_GROUP_OTHERS_SCRIPT, *args)
        others = [member.decode("utf8") for member in members]
        for channel in others:
            await self.send(channel, message)
        return len(others)

    async def receive(self, channel):
        """The next message on ``channel``, however long Redis is away meanwhile."""
        delay = RETRY_FIRST_SECONDS
        failing_since = None
        while True:
            try:
                if failing_since is not None:
                    await self._memberships_restore()
                    down = asyncio.get_running_loop().time() - failing_since
                    logger.info("channel layer: Redis reachable again after %.1f s; groups restored", down)
                    failing_since, delay = None, RETRY_FIRST_SECONDS
                return await super().receive(channel)
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                if failing_since is None:
                    failing_since = asyncio.get_running_loop().time()
                    self.outages += 1
                    logger.warning("channel layer: Redis unreachable (%s); retrying", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _memberships_restore(self) -> None:
        """Add every remembered membership again (group_add is idempotent)."""
        for channel, groups in list(self._memberships.items()):
            for group in list(groups):
                await super().group_add(group, channel)


class _ReceiveBuffers(collections.defaultdict):
    """channels_redis's per-channel receive buffers, which do not keep messages for closed channels."""

    def __init__(self, factory, closed: dict[str, float]):
        super().__init__(factory)
        self._closed = closed

    def __missing__(self, channel):
        if channel in self._closed:
            return self.default_factory()  # a queue nobody keeps: the message is dropped
        return super().__missing__(channel)

    def __delitem__(self, channel):
        # channels_redis deletes a channel's buffer when its receive is cancelled, and only then
        # cancels the receive's own lock and queue waits. channel_closed has usually dropped the
        # buffer already (the consumer's disconnect runs before its receive is cancelled): a
        # KeyError here skipped those cancels, and the orphaned lock wait later took the
        # process's receive lock for good, so no socket of the process got a channel message
        # again (seen as one KeyError traceback and ~1 KB kept per conversation in the soak).
        self.pop(channel, None)

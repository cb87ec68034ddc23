"""The Redis channel layer as configured: hundreds of sockets joining groups at once wait for a pooled
connection instead of failing, and group messages reach their members."""

import asyncio

import pytest
from django.conf import settings

from chatbot.channel_layer import POOL_SIZE, ResilientRedisChannelLayer
from config.settings.base import channel_layers

pytestmark = pytest.mark.redis


async def test_more_concurrent_group_calls_than_pooled_connections_all_succeed(redis_client):
    config = channel_layers(settings.TEST_REDIS_URL)["default"]["CONFIG"]
    layer = ResilientRedisChannelLayer(**{**config, "prefix": "test-layer"})
    channels = [await layer.new_channel() for _ in range(POOL_SIZE * 3)]
    await asyncio.gather(*(layer.group_add("conversation.x", channel) for channel in channels))
    await layer.group_send("conversation.x", {"type": "conversation.exchange", "n": 1})
    received = await asyncio.gather(*(layer.receive(channel) for channel in channels[:5]))
    assert [message["n"] for message in received] == [1] * 5
    await asyncio.gather(*(layer.group_discard("conversation.x", channel) for channel in channels))
    await layer.flush()
    await layer.close_pools()


async def test_messages_for_a_closed_channel_are_not_kept(redis_client):
    config = channel_layers(settings.TEST_REDIS_URL)["default"]["CONFIG"]
    layer = ResilientRedisChannelLayer(**{**config, "prefix": "test-closed"})
    alive, gone = await layer.new_channel(), await layer.new_channel()
    for channel in (alive, gone):
        await layer.group_add("conversation.y", channel)
    await layer.group_discard("conversation.y", gone)
    layer.channel_closed(gone)
    await layer.group_send("conversation.y", {"type": "conversation.exchange", "n": 1})
    await layer.send(gone, {"type": "conversation.exchange", "n": 2})  # in flight when it closed
    await layer.send(alive, {"type": "conversation.exchange", "n": 3})
    assert [(await layer.receive(alive))["n"] for _ in range(2)] == [1, 3]
    # Receiving for "alive" popped the message for "gone" too, and kept nothing of it.
    assert gone not in layer.receive_buffer and alive not in layer.receive_buffer
    await layer.flush()
    await layer.close_pools()


async def test_group_send_others_skips_the_sender(redis_client):
    config = channel_layers(settings.TEST_REDIS_URL)["default"]["CONFIG"]
    layer = ResilientRedisChannelLayer(**{**config, "prefix": "test-others"})
    sender, *tabs = [await layer.new_channel() for _ in range(3)]
    for channel in (sender, *tabs):
        await layer.group_add("conversation.z", channel)
    event = {"type": "conversation.exchange", "n": 1}
    assert await layer.group_send_others("conversation.z", event, sender=sender) == 2
    assert [(await layer.receive(tab))["n"] for tab in tabs] == [1, 1]
    # The sender's first message is one sent to it afterwards: the group event never reached it.
    await layer.send(sender, {"type": "conversation.exchange", "n": 2})
    assert (await layer.receive(sender))["n"] == 2
    # A conversation with one socket sends nothing at all.
    await layer.group_add("conversation.alone", sender)
    assert await layer.group_send_others("conversation.alone", {"type": "x"}, sender=sender) == 0
    await layer.flush()
    await layer.close_pools()


async def test_a_socket_leaving_mid_receive_does_not_stop_the_others(redis_client):
    # As Channels does it: the consumer's disconnect (channel_closed) runs, then its pending
    # receive is cancelled. The process's other sockets must keep getting their messages.
    config = channel_layers(settings.TEST_REDIS_URL)["default"]["CONFIG"]
    layer = ResilientRedisChannelLayer(**{**config, "prefix": "test-leaving"})
    staying = await layer.new_channel()
    for round_number in range(3):
        leaving = await layer.new_channel()
        staying_waits = asyncio.ensure_future(layer.receive(staying))
        await asyncio.sleep(0.1)  # it holds the receive lock, reading Redis for the process
        waiting = asyncio.ensure_future(layer.receive(leaving))
        await asyncio.sleep(0.1)  # it waits for the lock or a message
        layer.channel_closed(leaving)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting  # not a KeyError from channels_redis's cancel path
        await layer.send(staying, {"type": "conversation.exchange", "n": round_number})
        assert (await asyncio.wait_for(staying_waits, timeout=10))["n"] == round_number
    # Nothing of the departed sockets is left waiting: the last receive out dropped the lock.
    assert layer.receive_count == 0 and layer.receive_lock is None
    await layer.flush()
    await layer.close_pools()


async def test_joining_a_conversation_tells_the_sockets_already_there_and_counts_them(redis_client):
    from chatbot.handoff_events import conversation_join

    config = channel_layers(settings.TEST_REDIS_URL)["default"]["CONFIG"]
    layer = ResilientRedisChannelLayer(**{**config, "prefix": "test-join"})
    first, tab = await layer.new_channel(), await layer.new_channel()
    assert await conversation_join(layer, "conversation.j", first) == 0  # alone: nobody to tell
    assert await conversation_join(layer, "conversation.j", tab) == 1
    assert await layer.receive(first) == {"type": "conversation.joined", "sender": tab}
    await layer.flush()
    await layer.close_pools()

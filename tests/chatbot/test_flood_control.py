"""Flood control's Redis scripts on the real Redis (chatbot.flood_control)."""

import uuid

import pytest
from django.test import override_settings

from chatbot.flood_control import FloodControl

pytestmark = pytest.mark.redis


@override_settings(CHATBOT_CONNECTIONS_PER_IP=2, CHATBOT_FLOOD_BAN_SECONDS=30)
async def test_a_ban_keeps_new_sockets_out_but_open_ones_keep_their_place(settings):
    limiter = FloodControl(settings.TEST_REDIS_URL)
    address = f"198.51.100.{uuid.uuid4().int % 250}-{uuid.uuid4().hex[:6]}"
    assert (await limiter.connection_open(address, "a")).allowed
    assert (await limiter.connection_open(address, "b")).allowed
    over = await limiter.connection_open(address, "c")
    assert (over.allowed, over.limit) == (False, "connections")
    await limiter.address_ban(address)
    # The open sockets renew their lease; a new one is refused for the ban's remaining time.
    assert (await limiter.connection_open(address, "a")).allowed
    banned = await limiter.connection_open(address, "d")
    assert (banned.allowed, banned.limit) == (False, "flood") and 25_000 < banned.retry_after_ms <= 30_000
    await limiter.connection_close(address, "a")
    await limiter.connection_close(address, "b")
    assert not (await limiter.connection_open(address, "d")).allowed  # still banned, though room now


@override_settings(CHATBOT_FRAME_BURST=3, CHATBOT_FRAMES_PER_SECOND=1, CHATBOT_MESSAGE_BURST=2)
async def test_frames_and_messages_are_charged_to_their_buckets(settings):
    limiter = FloodControl(settings.TEST_REDIS_URL)
    socket_id = f"test-{uuid.uuid4()}"
    assert (await limiter.frame_check(socket_id, message=True)).allowed
    assert (await limiter.frame_check(socket_id, message=True)).allowed
    refused = await limiter.frame_check(socket_id, message=True)
    assert (refused.allowed, refused.limit) == (False, "messages") and refused.retry_after_ms > 0
    # The refused message still was a frame: the burst of 3 is spent.
    frames = await limiter.frame_check(socket_id, message=False)
    assert (frames.allowed, frames.limit) == (False, "frames") and 0 < frames.retry_after_ms <= 1000

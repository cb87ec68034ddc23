"""Flood control (chatbot.flood_control): the per-address cap and ban on the real Redis, and each
socket's own rate buckets."""

import uuid

import pytest
from django.test import override_settings

from chatbot.flood_control import FloodControl, SocketRates


@pytest.mark.redis
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
def test_frames_and_messages_are_charged_to_their_buckets():
    rates = SocketRates()
    assert rates.charge(message=True, now=100.0).allowed
    assert rates.charge(message=True, now=100.0).allowed
    refused = rates.charge(message=True, now=100.0)
    assert (refused.allowed, refused.limit) == (False, "messages") and refused.retry_after_ms > 0
    # The refused message still was a frame: the burst of 3 is spent.
    frames = rates.charge(message=False, now=100.0)
    assert (frames.allowed, frames.limit, frames.retry_after_ms) == (False, "frames", 1000)
    # A refused frame is not charged: one second later exactly one more frame goes through.
    assert rates.charge(message=False, now=101.0).allowed
    assert not rates.charge(message=False, now=101.0).allowed


@override_settings(
    CHATBOT_FRAME_BURST=30, CHATBOT_FRAMES_PER_SECOND=5, CHATBOT_MESSAGE_BURST=2, CHATBOT_MESSAGES_PER_MINUTE=30
)
def test_messages_refill_at_their_sustained_rate():
    rates = SocketRates()
    assert all(rates.charge(message=True, now=0.0).allowed for _ in range(2))
    refused = rates.charge(message=True, now=0.0)
    assert (refused.limit, refused.retry_after_ms) == ("messages", 2000)  # 30 a minute: one every 2 s
    assert not rates.charge(message=True, now=1.9).allowed
    assert rates.charge(message=True, now=2.0).allowed
    # Each socket has buckets of its own.
    assert SocketRates().charge(message=True, now=2.0).allowed

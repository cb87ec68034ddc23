"""What the hand-off sends between sockets over the channel layer (Redis in every real stack, so a
customer on one web process and an agent on another see each other).

Groups: ``conversation.<id>`` holds every socket of a conversation (the customer's tabs and the
agents watching it); ``agents`` holds every agent console (the inbox). Events:

- ``conversation.exchange`` — messages stored on one socket, as a history frame (chatbot.consumers);
- ``conversation.frame`` — one server frame for the customer's sockets and/or the agents';
- ``conversation.joined`` — a socket joined a conversation that may have others already (a tab
  resuming it, an agent watching it): the customer sockets there start sharing their exchanges;
- ``inbox.changed`` — the queue changed: agent consoles read their inbox again.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from chatbot import protocol

logger = logging.getLogger(__name__)

AGENTS_GROUP = "agents"
INBOX_CHANGED = {"type": "inbox.changed"}


def conversation_group(conversation_id) -> str:
    """The channel-layer group of every socket of one conversation."""
    return f"conversation.{conversation_id}"


def frame_event(frame: protocol.ServerFrame, *, to: tuple[str, ...], sender: str = "", conversation: str = "") -> dict:
    """A ``conversation.frame`` event: ``frame`` for the sockets named in ``to`` ("customer",
    "agent"), except the sender's own."""
    return {
        "type": "conversation.frame",
        "frame": protocol.frame_dump(frame),
        "to": list(to),
        "sender": sender,
        "conversation": conversation,
    }


async def group_send(layer, group: str, event: dict) -> None:
    """Send to a group; a channel layer that is away (Redis restarting) costs the live update, never
    the caller's socket: the stored state shows on the next load."""
    try:
        await layer.group_send(group, event)
    except Exception as error:  # noqa: BLE001 - Redis down must not close a socket
        logger.warning("channel layer group_send to %s failed: %s", group, error)


async def conversation_join(layer, group: str, channel: str) -> int | None:
    """Add ``channel`` to a conversation's group and tell the sockets already there
    (``conversation.joined``): a customer socket that believed itself alone shares what it stored
    meanwhile and every exchange from then on (chatbot.consumers).

    Returns how many sockets were told, or None when the layer cannot say. Joining is added first,
    looked up second: of two sockets joining at once, at least one finds (and tells) the other."""
    await layer.group_add(group, channel)
    event = {"type": "conversation.joined", "sender": channel}
    if hasattr(layer, "group_send_others"):
        return await layer.group_send_others(group, event, sender=channel)
    await layer.group_send(group, event)
    return None


async def agents_away_announce(layer, released: list[tuple[str, str]]) -> None:
    """Tell the customers (and agents watching) of conversations that went back to the queue because
    their agent's console stayed away (chatbot.handoff.agents_away_release), and the inboxes."""
    for conversation_id, name in released:
        left = protocol.AgentLeftFrame(agent=name, reason="agent_away")
        event = frame_event(left, to=("customer", "agent"), conversation=conversation_id)
        await group_send(layer, conversation_group(conversation_id), event)
    if released:
        await group_send(layer, AGENTS_GROUP, INBOX_CHANGED)


def agents_away_announce_from_sync(released: list[tuple[str, str]]) -> None:
    """:func:`agents_away_announce` for synchronous code (the Celery sweep)."""
    if released:
        async_to_sync(agents_away_announce)(get_channel_layer(), released)

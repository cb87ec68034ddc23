"""The agent console's websocket (``/ws/agent/``): the inbox in real time, and chatting with the
customers an agent takes over. Thin: the writes are chatbot.handoff, the reads ops.inbox, and what
goes to the customer's sockets travels on the channel layer (chatbot.handoff_events), so an agent on
one web process reaches a customer on another.

Frames from the console: ``watch``/``unwatch`` {conversation}; ``take`` {conversation};
``release`` {conversation, close}; ``message`` {conversation, id, text}; ``typing``
{conversation, active}; ``ping``. To the console: ``inbox``, ``event`` {conversation, frame} (what
the customer's side sees: their messages, the bot's replies, typing, joins and leaves), ``taken``,
``released``, ``sent`` {conversation, reply_to, message_id}, ``watching``, ``pong``, ``error``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

from django.conf import settings

from chatbot import handoff
from chatbot.handoff_events import (
    AGENTS_GROUP,
    INBOX_CHANGED,
    agents_away_announce,
    conversation_group,
    conversation_join,
    frame_event,
    group_send,
)
from chatbot.json_socket import JsonSocketConsumer
from chatbot.origins import origin_allowed, scope_origin
from chatbot.protocol import AgentJoinedFrame, AgentLeftFrame, AgentMessageFrame, TypingFrame, agent_name
from chatbot.runtime import in_pool
from kb.text import text_sanitise
from ops.inbox import inbox_for
from ops.roles import can_handle_conversations

logger = logging.getLogger(__name__)

# An agent's message may be longer than a customer's (a pasted FAQ answer, steps).
AGENT_MESSAGE_MAX_CHARS = 8000
# Grace-period checks scheduled by closed consoles: kept referenced until they have run.
_away_checks: set[asyncio.Task] = set()


class AgentConsumer(JsonSocketConsumer):
    """One agent console (a browser tab of /ops/inbox/)."""

    heartbeat: asyncio.Task | None = None  # renews the agent's presence while the console is open

    async def connect(self):
        self.agent = self.scope.get("user")
        self.watching: set[str] = set()
        self.held: set[str] = set()  # taken on this console: its typing goes to the customer
        # Only the app's own pages: a page elsewhere must not act with an agent's cookies.
        allowed = origin_allowed(scope_origin(self.scope), self.scope, []) and await in_pool(can_handle_conversations)(
            self.agent
        )
        if not allowed:
            await self.close()  # before accept: the handshake is refused (403)
            return
        await self.accept()
        await self.channel_layer.group_add(AGENTS_GROUP, self.channel_name)
        self.heartbeat = asyncio.create_task(self._heartbeat())
        await self._inbox_send()

    async def __call__(self, scope, receive, send):
        # However the consumer ends (a disconnect, or an error in a handler), the agent's presence
        # stops being renewed and the grace period starts.
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._closed()

    async def disconnect(self, code):
        await self._closed()

    async def _closed(self) -> None:
        if self.heartbeat is None:
            return
        self.heartbeat.cancel()
        self.heartbeat = None
        for group in [AGENTS_GROUP, *(conversation_group(c) for c in self.watching)]:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception as error:  # noqa: BLE001 - Redis away: the membership expires by itself
                logger.warning("group_discard failed: %s", error)
        # The agent's chats stay theirs for the grace period (a reload, a short outage); then, unless a
        # console of theirs came back meanwhile, the queue gets them back.
        check = asyncio.get_running_loop().create_task(_release_after_grace(self.channel_layer))
        _away_checks.add(check)
        check.add_done_callback(_away_checks.discard)

    async def _heartbeat(self) -> None:
        interval = max(0.5, min(30.0, settings.CHATBOT_AGENT_GRACE_SECONDS / 3))
        while True:
            try:
                await in_pool(handoff.agent_seen)(agent=self.agent)
            except Exception:  # noqa: BLE001 - the database away for a moment: try again next beat
                logger.warning("agent presence not recorded", exc_info=True)
            await asyncio.sleep(interval)

    async def inbox_changed(self, event):
        await self._inbox_send()

    async def conversation_frame(self, event):
        if "agent" in event["to"] and event["sender"] != self.channel_name:
            await self.send_json({"type": "event", "conversation": event["conversation"], "frame": event["frame"]})

    async def conversation_joined(self, event):
        """Another socket joined a watched conversation: nothing for the console to show."""

    async def conversation_exchange(self, event):
        await self.send_json({"type": "event", "conversation": event.get("conversation", ""), "frame": event["frame"]})

    async def receive(self, text_data=None, bytes_data=None):
        try:
            content = json.loads(text_data or "")
            if not isinstance(content, dict):
                raise ValueError
        except (ValueError, RecursionError):
            await self._error("invalid_frame", "Send JSON objects.")
            return
        kind = content.get("type")
        handler = {
            "watch": self._watch,
            "unwatch": self._unwatch,
            "take": self._take,
            "release": self._release,
            "message": self._message,
            "typing": self._typing,
            "ping": self._ping,
        }.get(kind)
        if handler is None:
            await self._error("unknown_type", f"Unknown frame type {str(kind)[:40]!r}.")
            return
        conversation = content.get("conversation")
        if kind != "ping":
            try:
                conversation = str(uuid.UUID(str(conversation)))
            except ValueError:
                await self._error("invalid_conversation", 'A "conversation" id is needed.')
                return
        try:
            await handler(conversation, content)
        except handoff.HandoffRefused as refused:
            await self._error(refused.code, refused.detail, conversation, reply_to=content.get("id"))
        except Exception:  # noqa: BLE001 - the database or Redis away: say so, keep the console open
            logger.exception("agent console frame %s failed", kind)
            await self._error("internal_error", "That did not work; please try again.", conversation, content.get("id"))

    async def _ping(self, _conversation, _content):
        await self.send_json({"type": "pong"})

    async def _watch(self, conversation: str, _content) -> None:
        if conversation not in self.watching:
            self.watching.add(conversation)
            # Announced, so that the customer's socket shares its exchanges from now on.
            await conversation_join(self.channel_layer, conversation_group(conversation), self.channel_name)
        await self.send_json({"type": "watching", "conversation": conversation})

    async def _unwatch(self, conversation: str, _content) -> None:
        if conversation in self.watching:
            self.watching.discard(conversation)
            await self.channel_layer.group_discard(conversation_group(conversation), self.channel_name)

    async def _take(self, conversation: str, _content) -> None:
        taken, already = await in_pool(handoff.conversation_take)(conversation_id=conversation, agent=self.agent)
        await self._watch(conversation, None)
        self.held.add(conversation)
        if not already:
            joined = AgentJoinedFrame(agent=agent_name(self.agent))
            await self._broadcast(conversation, joined)
            await group_send(self.channel_layer, AGENTS_GROUP, INBOX_CHANGED)
        await self.send_json({"type": "taken", "conversation": conversation, "state": taken.state})

    async def _release(self, conversation: str, content) -> None:
        close = content.get("close") is True
        released = await in_pool(handoff.conversation_release)(
            conversation_id=conversation, agent=self.agent, close=close
        )
        self.held.discard(conversation)
        left = AgentLeftFrame(agent=agent_name(self.agent), reason="closed" if close else "handed_back")
        await self._broadcast(conversation, left)
        await group_send(self.channel_layer, AGENTS_GROUP, INBOX_CHANGED)
        await self.send_json({"type": "released", "conversation": conversation, "state": released.state})

    async def _message(self, conversation: str, content) -> None:
        client_id, text = content.get("id"), content.get("text")
        if not isinstance(client_id, str) or not 0 < len(client_id) <= 100:
            await self._error("invalid_id", 'A message needs an "id" of 1-100 characters.', conversation)
            return
        text = text_sanitise(text).strip() if isinstance(text, str) else ""
        if not text or len(text) > AGENT_MESSAGE_MAX_CHARS:
            await self._error(
                "invalid_text",
                f"A message needs text of at most {AGENT_MESSAGE_MAX_CHARS} characters.",
                conversation,
                reply_to=client_id,
            )
            return
        stored = await in_pool(handoff.agent_message_save)(
            conversation_id=conversation, agent=self.agent, client_id=client_id, text=text
        )
        message = stored.message
        if not stored.duplicate:
            frame = AgentMessageFrame(
                message_id=message.pk,
                text=message.text,
                agent=agent_name(self.agent),
                created_at=message.created_at.isoformat(),
            )
            await self._broadcast(conversation, frame)
        await self.send_json(
            {
                "type": "sent",
                "conversation": conversation,
                "reply_to": client_id,
                "message_id": message.pk,
                "created_at": message.created_at.isoformat(),
            }
        )

    async def _typing(self, conversation: str, content) -> None:
        if conversation not in self.held:
            return
        frame = TypingFrame(active=content.get("active") is True, from_="agent")
        await group_send(
            self.channel_layer,
            conversation_group(conversation),
            frame_event(frame, to=("customer",), sender=self.channel_name, conversation=conversation),
        )

    async def _broadcast(self, conversation: str, frame) -> None:
        event = frame_event(frame, to=("customer", "agent"), sender=self.channel_name, conversation=conversation)
        await group_send(self.channel_layer, conversation_group(conversation), event)

    async def _inbox_send(self) -> None:
        inbox = await in_pool(inbox_for)(agent=self.agent)
        await self.send_json({"type": "inbox", **inbox})

    async def _error(self, code: str, detail: str, conversation: str | None = None, reply_to=None) -> None:
        frame = {"type": "error", "code": code, "detail": detail}
        if conversation:
            frame["conversation"] = conversation
        if reply_to:
            frame["reply_to"] = reply_to
        await self.send_json(frame)


async def _release_after_grace(layer) -> None:
    await asyncio.sleep(settings.CHATBOT_AGENT_GRACE_SECONDS + 1)
    try:
        released = await in_pool(handoff.agents_away_release)()
        await agents_away_announce(layer, released)
    except Exception:  # noqa: BLE001 - the periodic sweep (chatbot.tasks.agents_away_release) tries again
        logger.warning("releasing an away agent's chats failed", exc_info=True)

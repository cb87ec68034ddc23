"""The customer chat websocket: thin frame handling over chatbot.answering. Every frame is defined
in chatbot.protocol (and README.md's protocol table)."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from chatbot import protocol
from chatbot.answering import ChoiceInvalid, message_reply, suggestion_choose
from chatbot.protocol import (
    ChooseFrame,
    DeltaFrame,
    FrameError,
    HistoryFrame,
    MessageFrame,
    PingFrame,
    PongFrame,
    SessionFrame,
    history_item,
    reply_frame,
)
from chatbot.runtime import in_pool, index_wait
from chatbot.selectors import conversation_history
from chatbot.services import StoredReply, conversation_start

logger = logging.getLogger(__name__)


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """One customer's connection."""

    async def connect(self):
        await self.accept()
        query = parse_qs(self.scope.get("query_string", b"").decode("utf-8", "replace"))
        requested = (query.get("conversation") or [""])[0]
        site = protocol.site_parse((query.get("site") or [""])[0])
        self.conversation, resumed = await in_pool(conversation_start)(conversation_id=requested or None, site=site)
        # Joined before the first frame goes out, so that nothing stored after the client saw its
        # session is missed.
        self.group = f"conversation.{self.conversation.id}"
        await self._layer_call("group_add", self.group, self.channel_name)
        if requested and not resumed:
            await self._send_error(
                FrameError("conversation_not_found", "That conversation does not exist; a new one was started.")
            )
        await self.send_frame(SessionFrame(conversation=str(self.conversation.id), resumed=resumed))
        if resumed:
            history = await in_pool(conversation_history)(
                conversation=self.conversation, limit=settings.CHATBOT_HISTORY_ON_RESUME
            )
            await self.send_frame(HistoryFrame(messages=history))

    async def disconnect(self, code):
        if getattr(self, "group", None):
            await self._layer_call("group_discard", self.group, self.channel_name)
        if hasattr(self.channel_layer, "channel_closed"):
            # Events still on their way to this socket (its own last exchange) must not pile up.
            self.channel_layer.channel_closed(self.channel_name)

    async def send_frame(self, frame: protocol.ServerFrame) -> None:
        """Send one protocol frame."""
        await self.send_json(protocol.frame_dump(frame))

    async def conversation_exchange(self, event):
        """Another socket of this conversation (another tab, maybe on another web process) stored
        an exchange: show it here too. The event carries the history frame, already dumped."""
        if event["sender"] != self.channel_name:
            await self.send_json(event["frame"])

    async def _exchange_share(self, stored: StoredReply) -> None:
        if stored.duplicate:
            return
        # A reply just stored holds its question in memory: no database access here.
        frame = HistoryFrame(messages=[history_item(stored.message.reply_to), history_item(stored.message)])
        event = {"type": "conversation.exchange", "sender": self.channel_name, "frame": protocol.frame_dump(frame)}
        if hasattr(self.channel_layer, "group_send_others"):
            await self._layer_call("group_send_others", self.group, event, sender=self.channel_name)
        else:
            await self._layer_call("group_send", self.group, event)

    async def _layer_call(self, method: str, *args, **kwargs) -> None:
        """A channel-layer call that may fail while Redis is away: the customer's chat goes on (the
        layer restores group memberships when Redis is back; a missed broadcast shows on reload)."""
        try:
            await getattr(self.channel_layer, method)(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - Redis down must not close a customer's socket
            logger.warning("channel layer %s failed: %s", method, error)

    async def receive(self, text_data=None, bytes_data=None):
        try:
            frame = protocol.client_frame_parse(text_data)
            if isinstance(frame, PingFrame):
                await self.send_frame(PongFrame())
            elif isinstance(frame, ChooseFrame):
                await self._choose(frame)
            else:
                await self._message(frame)
        except FrameError as error:
            await self._send_error(error)

    async def _message(self, frame: MessageFrame) -> None:
        client_id = frame.id
        if not await index_wait(settings.CHATBOT_NOT_READY_WAIT_SECONDS):
            # Answering without an index would offer a person for every question: say so instead,
            # store nothing, and let the client send the same message (same id) again.
            raise FrameError(
                "not_ready",
                "The assistant is still starting up; your message will be sent again in a moment.",
                client_id,
                retry_after_ms=settings.CHATBOT_NOT_READY_RETRY_MS,
            )

        async def send_delta(chunk: str) -> None:
            await self.send_frame(DeltaFrame(reply_to=client_id, text=chunk))

        try:
            stored = await message_reply(
                conversation=self.conversation, client_id=client_id, text=frame.text, on_delta=send_delta
            )
        except Exception:  # noqa: BLE001 - one failed answer must not drop the customer's connection
            logger.exception("answering message %s failed", client_id)
            raise FrameError("internal_error", "Sorry, something went wrong; please try again.", client_id) from None
        await self._reply_send(stored)

    async def _choose(self, frame: ChooseFrame) -> None:
        try:
            stored = await suggestion_choose(
                conversation=self.conversation, entry_id=frame.entry_id, client_id=frame.id
            )
        except ChoiceInvalid as error:
            raise FrameError("invalid_choice", str(error), frame.id) from None
        except Exception:  # noqa: BLE001 - as for messages: an error frame, never a dropped connection
            logger.exception("answering choice %s failed", frame.entry_id)
            raise FrameError("internal_error", "Sorry, something went wrong; please try again.", frame.id) from None
        await self._reply_send(stored)

    async def _reply_send(self, stored: StoredReply) -> None:
        await self.send_frame(reply_frame(stored.message, client_id=stored.client_id, duplicate=stored.duplicate))
        await self._exchange_share(stored)

    async def _send_error(self, error: FrameError) -> None:
        await self.send_frame(error.frame())

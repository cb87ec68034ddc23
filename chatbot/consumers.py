"""The customer chat websocket: thin JSON frame handling over chatbot.services."""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from chatbot.answering import ChoiceInvalid, message_reply, reply_frame, suggestion_choose
from chatbot.runtime import in_pool, index_wait
from chatbot.selectors import conversation_history, message_item
from chatbot.services import conversation_start

logger = logging.getLogger(__name__)

MAX_CLIENT_ID_CHARS = 100


class FrameError(Exception):
    """A client frame that cannot be accepted; becomes an error frame, never a closed socket."""

    def __init__(self, code: str, detail: str, reply_to: str | None = None, **extra):
        super().__init__(detail)
        self.code, self.detail, self.reply_to, self.extra = code, detail, reply_to, extra


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """One customer's connection. Frames are documented in README.md (Chat protocol)."""

    async def connect(self):
        await self.accept()
        query = parse_qs(self.scope.get("query_string", b"").decode("utf-8", "replace"))
        requested = (query.get("conversation") or [""])[0]
        site = (query.get("site") or ["default"])[0][:100] or "default"
        self.conversation, resumed = await in_pool(conversation_start)(conversation_id=requested or None, site=site)
        # Joined before the first frame goes out, so that nothing stored after the client saw its
        # session is missed.
        self.group = f"conversation.{self.conversation.id}"
        await self._layer_call("group_add", self.group, self.channel_name)
        if requested and not resumed:
            await self._send_error("conversation_not_found", "That conversation does not exist; a new one was started.")
        await self.send_json({"type": "session", "conversation": str(self.conversation.id), "resumed": resumed})
        if resumed:
            history = await in_pool(conversation_history)(
                conversation=self.conversation, limit=settings.CHATBOT_HISTORY_ON_RESUME
            )
            await self.send_json({"type": "history", "messages": history})

    async def disconnect(self, code):
        if getattr(self, "group", None):
            await self._layer_call("group_discard", self.group, self.channel_name)
        if hasattr(self.channel_layer, "channel_closed"):
            # Events still on their way to this socket (its own last exchange) must not pile up.
            self.channel_layer.channel_closed(self.channel_name)

    async def conversation_exchange(self, event):
        """Another socket of this conversation (another tab, maybe on another web process) stored
        an exchange: show it here too."""
        if event["sender"] != self.channel_name:
            await self.send_json({"type": "history", "messages": event["messages"]})

    async def _exchange_share(self, stored) -> None:
        if stored.duplicate:
            return
        # A reply just stored holds its question in memory: no database access here.
        items = [message_item(stored.message.reply_to), message_item(stored.message)]
        event = {"type": "conversation.exchange", "sender": self.channel_name, "messages": items}
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
            if text_data is None:
                raise FrameError("invalid_frame", "Send JSON text frames, not binary.")
            # Bound the work before parsing: a frame can't be much larger than its longest text.
            if len(text_data) > settings.CHATBOT_MAX_MESSAGE_CHARS * 8 + 1024:
                raise FrameError("frame_too_large", "The frame is too large.")
            try:
                content = json.loads(text_data)
            except ValueError as exc:
                raise FrameError("invalid_json", "The frame is not valid JSON.") from exc
            await self.receive_json(content)
        except FrameError as error:
            await self._send_error(error.code, error.detail, error.reply_to, **error.extra)

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict):
            raise FrameError("invalid_frame", "A frame must be a JSON object.")
        frame_type = content.get("type")
        if frame_type == "ping":
            await self.send_json({"type": "pong"})
            return
        if frame_type == "choose":
            await self._choose(content)
            return
        if frame_type != "message":
            raise FrameError("unknown_type", f"Unknown frame type {str(frame_type)[:40]!r}.")
        client_id, text = self._parse_message(content)
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
            await self.send_json({"type": "delta", "reply_to": client_id, "text": chunk})

        try:
            stored = await message_reply(
                conversation=self.conversation, client_id=client_id, text=text, on_delta=send_delta
            )
        except Exception:  # noqa: BLE001 - one failed answer must not drop the customer's connection
            logger.exception("answering message %s failed", client_id)
            raise FrameError("internal_error", "Sorry, something went wrong; please try again.", client_id) from None
        await self.send_json(reply_frame(stored))
        await self._exchange_share(stored)

    async def _choose(self, content: dict) -> None:
        client_id = content.get("id")
        if client_id is not None and (not isinstance(client_id, str) or not client_id.strip()):
            raise FrameError("invalid_id", 'A "choose" frame\'s "id", when given, must be a non-empty string.')
        if client_id is not None and len(client_id) > MAX_CLIENT_ID_CHARS:
            raise FrameError("invalid_id", f'"id" is longer than {MAX_CLIENT_ID_CHARS} characters.')
        entry_id = content.get("entry_id")
        if not isinstance(entry_id, int) or isinstance(entry_id, bool):
            raise FrameError("invalid_entry_id", 'A "choose" frame needs an integer "entry_id".', client_id)
        try:
            stored = await suggestion_choose(conversation=self.conversation, entry_id=entry_id, client_id=client_id)
        except ChoiceInvalid as error:
            raise FrameError("invalid_choice", str(error), client_id) from None
        except Exception:  # noqa: BLE001 - as for messages: an error frame, never a dropped connection
            logger.exception("answering choice %s failed", entry_id)
            raise FrameError("internal_error", "Sorry, something went wrong; please try again.", client_id) from None
        await self.send_json(reply_frame(stored))
        await self._exchange_share(stored)

    @staticmethod
    def _parse_message(content: dict) -> tuple[str, str]:
        client_id = content.get("id")
        if not isinstance(client_id, str) or not client_id.strip() or len(client_id) > MAX_CLIENT_ID_CHARS:
            raise FrameError(
                "invalid_id",
                f'A message needs an "id": a non-empty string of at most {MAX_CLIENT_ID_CHARS} characters.',
            )
        text = content.get("text")
        if text is None:
            raise FrameError("missing_text", 'A message needs a "text".', client_id)
        if not isinstance(text, str):
            raise FrameError("invalid_text", '"text" must be a string.', client_id)
        text = text.strip()
        if not text:
            raise FrameError("empty_text", "The message is empty.", client_id)
        limit = settings.CHATBOT_MAX_MESSAGE_CHARS
        if len(text) > limit:
            raise FrameError("text_too_long", f"The message is longer than {limit} characters.", client_id)
        return client_id, text

    async def _send_error(self, code: str, detail: str, reply_to: str | None = None, **extra):
        frame = {"type": "error", "code": code, "detail": detail}
        if reply_to is not None:
            frame["reply_to"] = reply_to
        await self.send_json({**frame, **extra})

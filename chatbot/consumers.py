"""The customer chat websocket: thin frame handling over chatbot.answering. Every frame is defined
in chatbot.protocol (and README.md's protocol table).

Frames are read as fast as they come: pings are answered at once, messages are answered one at a
time by a task of the socket's own, and the ones that arrive meanwhile wait in a short queue. Every
frame gets a reply or an error frame (rate_limited, busy, ...), never silence.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from functools import partial

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from django.conf import settings

from chatbot import metrics, protocol
from chatbot.answering import ChoiceInvalid, message_reply, suggestion_choose
from chatbot.flood_control import CONNECTION_LEASE_SECONDS, SocketRates, Verdict, flood_control
from chatbot.handoff import customer_message_save, handoff_cancel
from chatbot.handoff_events import AGENTS_GROUP, INBOX_CHANGED, conversation_group, conversation_join, frame_event
from chatbot.json_socket import JsonSocketConsumer
from chatbot.logging_context import conversation_bind
from chatbot.models import ConversationState
from chatbot.protocol import (
    AgentJoinedFrame,
    ChooseFrame,
    DeltaFrame,
    FeedbackFrame,
    FeedbackSavedFrame,
    FrameError,
    HandoffCancelFrame,
    HandoffCancelledFrame,
    HistoryFrame,
    IdentifiedFrame,
    IdentifyFrame,
    MessageFrame,
    PingFrame,
    PongFrame,
    RatingFrame,
    RatingSavedFrame,
    ReceivedFrame,
    SessionFrame,
    TypingClientFrame,
    TypingFrame,
    agent_name,
    history_item,
    reply_frame,
)
from chatbot.resume_tokens import resume_token, resume_token_valid
from chatbot.runtime import in_pool, index_wait
from chatbot.selectors import conversation_history
from chatbot.services import (
    FeedbackInvalid,
    StoredReply,
    conversation_new,
    conversation_resume,
    feedback_save,
    identity_save,
    rating_save,
)

logger = logging.getLogger(__name__)

# Close code for a socket refused by the connection cap: "try again later" (RFC 6455 registry).
CLOSE_TRY_AGAIN_LATER = 1013
# What a socket that kept flooding is recorded as closing with ("policy violation"); the client sees
# the connection dropped (1006), after the flood_closed error frame.
CLOSE_POLICY_VIOLATION = 1008
# Refusals are counted in windows of this long (see CHATBOT_FLOOD_CLOSE_REFUSALS).
FLOOD_WINDOW_SECONDS = 60
# Exchanges kept for a tab that may join (the latest ones; older ones it reads with its history).
UNSHARED_ITEMS = 40


class ChatConsumer(JsonSocketConsumer):
    """One customer's connection."""

    async def connect(self):
        self.group = None
        self.socket_closed = False
        self.pending: collections.deque[MessageFrame | ChooseFrame] = collections.deque()
        self.answering: asyncio.Task | None = None
        self.lease: asyncio.Task | None = None
        self.rates = SocketRates()
        # Until when each limit refused this socket: a frame refused meanwhile is refused alike.
        self.refused_until: dict[str, float] = {}
        self.counted = False  # in the active connections gauge
        self.refusals, self.refusals_since = 0, time.monotonic()
        client = self.scope.get("client") or ("", 0)
        self.address = client[0] or ""
        await self.accept()
        verdict = await flood_control().connection_open(self.address, self.channel_name)
        if not verdict.allowed:
            self.address = ""  # not counted, so nothing to release
            metrics.rate_limit_hit(verdict.limit)
            await self._send_error(self._refusal(verdict, None))
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            # Frames already on their way are not read: this socket has no conversation.
            self.socket_closed = True
            return
        self.counted = True
        metrics.connection_opened()
        self.lease = asyncio.create_task(self._lease_keep())
        await self._conversation_open(protocol.connect_query_parse(self.scope.get("query_string", b"")))

    async def _conversation_open(self, query: protocol.ConnectQuery) -> None:
        resumed = joining = False
        site = self.scope["chat_site"]
        if query.conversation and resume_token_valid(query.conversation, query.resume_token):
            joining = True  # other tabs of this conversation may be open: it will ask
            self.conversation, resumed = await in_pool(conversation_resume)(
                conversation_id=query.conversation, site=site
            )
        else:
            # A conversation id alone opens nothing: the same error whether it exists or not.
            self.conversation = conversation_new(site=site)
            if query.resume_asked:
                await self._send_error(
                    FrameError("resume_denied", "That conversation cannot be resumed here; a new one was started.")
                )
        conversation_id = str(self.conversation.id)
        conversation_bind(conversation_id)
        # Who answers: the bot, or (waiting, agent) a person. Kept up to date by the hand-off's
        # events on the conversation's group, so a message costs no state look-up.
        self.state = self.conversation.state
        # Joined before the first frame goes out, so that nothing stored after the client saw its
        # session is missed.
        self.group = conversation_group(conversation_id)
        # A socket alone in its conversation shares nothing until another joins its group (a tab
        # resuming it, an agent watching it), which says so: until then exchanges wait in
        # ``unshared`` instead of costing a Redis call each to find nobody (most conversations
        # never have a second socket). A new conversation's id is this socket's alone; one that
        # resumes (a page reload, another tab) is alone if its announcement found nobody.
        self.alone = True
        self.outages_seen = getattr(self.channel_layer, "outages", 0)
        self.unshared: collections.deque[protocol.HistoryItem] = collections.deque(maxlen=UNSHARED_ITEMS)
        if joining:
            self.alone = await self._layer_call(conversation_join, self.group, self.channel_name) == 0
        else:
            await self._layer_call("group_add", self.group, self.channel_name)
        await self.send_frame(
            SessionFrame(conversation=conversation_id, resumed=resumed, resume_token=resume_token(conversation_id))
        )
        if resumed:
            history = await in_pool(conversation_history)(
                conversation=self.conversation, limit=settings.CHATBOT_HISTORY_ON_RESUME
            )
            await self.send_frame(HistoryFrame(messages=history))
            if self.state == ConversationState.AGENT:
                await self.send_frame(AgentJoinedFrame(agent=agent_name(self.conversation.agent)))

    async def dispatch(self, message):
        """Channels' dispatch without its per-frame database tidy-up: Channels closes stale
        connections of its one sync thread before every handler, a thread hop per frame that all
        sockets of a process queue for. This consumer touches the database only in the answer pool,
        whose threads tidy their own connections (chatbot.runtime.in_pool)."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def disconnect(self, code):
        self.socket_closed = True
        if self.counted:
            self.counted = False
            metrics.connection_closed()
        # Queued messages cannot be answered any more (the client resends them, same ids, when it
        # reconnects); the one being answered is finished and stored.
        self.pending.clear()
        if self.lease is not None:
            self.lease.cancel()
        if self.answering is not None:
            await asyncio.gather(self.answering, return_exceptions=True)
        if self.group:
            await self._layer_call("group_discard", self.group, self.channel_name)
        if self.address:
            await flood_control().connection_close(self.address, self.channel_name)
        if hasattr(self.channel_layer, "channel_closed"):
            # Events still on their way to this socket (its own last exchange) must not pile up.
            self.channel_layer.channel_closed(self.channel_name)

    async def _lease_keep(self) -> None:
        # An idle socket sends nothing for minutes: its place under the address's cap is renewed
        # on a timer, so that it neither lapses while open nor outlives a crashed process for long.
        while True:
            await asyncio.sleep(CONNECTION_LEASE_SECONDS / 3)
            await flood_control().connection_open(self.address, self.channel_name)

    async def send_frame(self, frame: protocol.ServerFrame) -> None:
        """Send one protocol frame (nothing, once the socket has closed)."""
        if not self.socket_closed:
            await self.send_json(protocol.frame_dump(frame))

    async def conversation_exchange(self, event):
        """Another socket of this conversation (another tab, maybe on another web process) stored
        an exchange: show it here too. The event carries the history frame, already dumped."""
        if event["sender"] != self.channel_name and not self.socket_closed:
            self.alone = False  # proof of company, should its announcement have been lost
            if any(item.get("handoff") == "requested" for item in event["frame"].get("messages", [])):
                self.state = ConversationState.WAITING  # another tab asked for a person
            await self.send_json(event["frame"])

    async def conversation_frame(self, event):
        """A hand-off frame (an agent joined, wrote, is typing, left): follow the state, and show it
        here if it is meant for the customer."""
        frame = event["frame"]
        kind = frame.get("type")
        if kind == "agent_joined":
            self.state = ConversationState.AGENT
        elif kind == "handoff_cancelled":
            self.state = ConversationState.BOT
        elif kind == "agent_left":
            self.state = {
                "handed_back": ConversationState.BOT,
                "closed": ConversationState.CLOSED,
                "agent_away": ConversationState.WAITING,
            }[frame["reason"]]
        if "customer" in event["to"] and event["sender"] != self.channel_name and not self.socket_closed:
            await self.send_json(frame)

    async def _exchange_share(self, stored: StoredReply) -> None:
        if stored.duplicate:
            return
        # A reply just stored holds its question in memory: no database access here.
        await self._history_share([history_item(stored.message.reply_to), history_item(stored.message)])
        if stored.message.decision.get("handoff") == "requested":
            # A person asked for: into the agents' inbox, at once.
            self.state = ConversationState.WAITING
            await self._layer_call("group_send", AGENTS_GROUP, INBOX_CHANGED)

    async def conversation_joined(self, event):
        """Another socket joined this conversation: from now on exchanges are shared, and the ones
        stored while this socket was alone go to it now (clients show a message id once)."""
        if event["sender"] == self.channel_name or self.socket_closed:
            return
        self.alone = False
        if self.unshared:
            await self._history_share([])

    async def _history_share(self, items: list[protocol.HistoryItem]) -> None:
        if self.alone and getattr(self.channel_layer, "outages", 0) != self.outages_seen:
            self.alone = False  # Redis went away meanwhile: a tab's announcement may have been lost
        if self.alone and self.state == ConversationState.BOT:
            self.unshared.extend(items)
            return
        if self.unshared:
            items = [*self.unshared, *items]
            self.unshared.clear()
        frame = HistoryFrame(messages=items)
        event = {
            "type": "conversation.exchange",
            "sender": self.channel_name,
            "conversation": str(self.conversation.id),
            "frame": protocol.frame_dump(frame),
        }
        if hasattr(self.channel_layer, "group_send_others"):
            await self._layer_call("group_send_others", self.group, event, sender=self.channel_name)
        else:
            await self._layer_call("group_send", self.group, event)

    async def _layer_call(self, method: str | Callable, *args, **kwargs):
        """A channel-layer call (a layer method's name, or a function taking the layer first) that
        may fail while Redis is away: the customer's chat goes on (the layer restores group
        memberships when Redis is back; a missed broadcast shows on reload). Its result, or None
        when it failed."""
        try:
            call = (
                getattr(self.channel_layer, method) if isinstance(method, str) else partial(method, self.channel_layer)
            )
            return await call(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - Redis down must not close a customer's socket
            logger.warning("channel layer %s failed: %s", method, error)
            self.alone = False  # an announcement may have been lost too: share from now on
            return None

    async def receive(self, text_data=None, bytes_data=None):
        if self.socket_closed:
            return
        # Parsed before the rate check (a refusal names the message it refuses), but charged to
        # the socket's rate whether valid or not: malformed frames are a flood too.
        try:
            frame, error = protocol.client_frame_parse(text_data), None
        except FrameError as parse_error:
            frame, error = None, parse_error
        is_message = isinstance(frame, (MessageFrame, ChooseFrame))
        verdict = self._rate_check(message=is_message)
        if not verdict.allowed:
            metrics.rate_limit_hit(verdict.limit)
            reply_to = frame.id if is_message else (error.reply_to if error else None)
            if self._flooding():
                await self._flood_close(reply_to)
                return
            await self._send_error(self._refusal(verdict, reply_to))
            # Frames queued for this socket are taken without a pause (a get from a non-empty queue
            # does not yield): a flood read in one 64 KB chunk held the event loop for ~100 ms of
            # refusals while every other socket of the process waited. One turn of the loop per
            # refusal lets the others go in between.
            await asyncio.sleep(0)
        elif error is not None:
            await self._send_error(error)
        elif isinstance(frame, PingFrame):
            await self.send_frame(PongFrame())
        elif isinstance(frame, HandoffCancelFrame):
            await self._handoff_cancel()
        elif isinstance(frame, TypingClientFrame):
            if self.state == ConversationState.AGENT:
                typing = TypingFrame(active=frame.active, from_="customer")
                event = frame_event(
                    typing, to=("agent",), sender=self.channel_name, conversation=str(self.conversation.id)
                )
                await self._layer_call("group_send", self.group, event)
        elif isinstance(frame, (FeedbackFrame, RatingFrame, IdentifyFrame)):
            # Quick writes, not queued behind an answer being written.
            try:
                await self.send_frame(await in_pool(self._record)(frame))
            except FrameError as record_error:
                await self._send_error(record_error)
            else:
                if isinstance(frame, IdentifyFrame) and frame.email and self.state == ConversationState.WAITING:
                    # An email left while waiting (outside opening hours): the inbox says so.
                    await self._layer_call("group_send", AGENTS_GROUP, INBOX_CHANGED)
        else:
            await self._enqueue(frame)

    def _record(self, frame: FeedbackFrame | RatingFrame | IdentifyFrame) -> protocol.ServerFrame:
        """Store a feedback, rating or identify frame; the frame that says so."""
        try:
            if isinstance(frame, FeedbackFrame):
                feedback_save(
                    conversation=self.conversation, message_id=frame.message_id, value=frame.value, reason=frame.reason
                )
                return FeedbackSavedFrame(message_id=frame.message_id, value=frame.value)
            if isinstance(frame, RatingFrame):
                rating_save(conversation=self.conversation, score=frame.score, comment=frame.comment)
                return RatingSavedFrame(score=frame.score)
            identity_save(conversation=self.conversation, name=frame.name, email=frame.email)
            return IdentifiedFrame()
        except FeedbackInvalid as invalid:
            code = "invalid_feedback" if isinstance(frame, FeedbackFrame) else "invalid_rating"
            raise FrameError(code, str(invalid)) from None

    async def _flood_close(self, reply_to: str | None) -> None:
        # Each refusal costs the event loop every customer shares (~0.15 ms): a socket that keeps
        # flooding is closed, and its address may not open another for a while.
        retry_after_ms = int(settings.CHATBOT_FLOOD_BAN_SECONDS * 1000)
        await self._send_error(
            FrameError(
                "flood_closed",
                "Far too many frames; this connection is closed.",
                reply_to,
                retry_after_ms=retry_after_ms or None,
            )
        )
        logger.warning("dropped a flooding socket after %d refusals", self.refusals)
        await flood_control().address_ban(self.address)
        await self.disconnect(CLOSE_POLICY_VIOLATION)
        # Ending the application makes uvicorn drop the TCP connection at once. A close frame would
        # not: uvicorn then reads on for its close handshake (10 s), parsing the flood's whole
        # backlog 256 KB at a time, which stalled every other socket of the process (p99 357 ms in
        # bench/bench_flood.py).
        raise StopConsumer

    def _flooding(self) -> bool:
        """Count a refusal; True once this socket has been refused more than
        CHATBOT_FLOOD_CLOSE_REFUSALS times within FLOOD_WINDOW_SECONDS (no person gets near)."""
        now = time.monotonic()
        if now - self.refusals_since > FLOOD_WINDOW_SECONDS:
            self.refusals_since, self.refusals = now, 0
        self.refusals += 1
        return self.refusals > settings.CHATBOT_FLOOD_CLOSE_REFUSALS

    def _rate_check(self, *, message: bool) -> Verdict:
        now = time.monotonic()
        for limit in ("frames", "messages") if message else ("frames",):
            until = self.refused_until.get(limit, 0.0)
            if now < until:
                return Verdict(allowed=False, limit=limit, retry_after_ms=max(1, round((until - now) * 1000)))
        verdict = self.rates.charge(message=message, now=now)
        if not verdict.allowed:
            self.refused_until[verdict.limit] = now + verdict.retry_after_ms / 1000
        return verdict

    def _refusal(self, verdict: Verdict, reply_to: str | None) -> FrameError:
        if verdict.limit == "flood":
            return FrameError(
                "flood_closed",
                "Far too many frames came from your network; please try again later.",
                retry_after_ms=verdict.retry_after_ms,
            )
        if verdict.limit == "connections":
            return FrameError(
                "too_many_connections",
                "Too many chat windows are open from your network; please close one and try again.",
                retry_after_ms=verdict.retry_after_ms,
            )
        what = "messages" if verdict.limit == "messages" else "frames"
        return FrameError(
            "rate_limited",
            f"You are sending {what} too fast; please wait a moment.",
            reply_to,
            retry_after_ms=verdict.retry_after_ms,
            limit=verdict.limit,
        )

    async def _enqueue(self, frame: MessageFrame | ChooseFrame) -> None:
        if self.answering is None or self.answering.done():
            self.answering = asyncio.create_task(self._answer_in_turn(frame))
        elif len(self.pending) < settings.CHATBOT_PENDING_MESSAGES:
            self.pending.append(frame)
        else:
            busy = FrameError(
                "busy",
                "Please wait for the answers to your earlier messages.",
                frame.id,
                retry_after_ms=settings.CHATBOT_NOT_READY_RETRY_MS,
            )
            await self._send_error(busy)

    async def _answer_in_turn(self, frame: MessageFrame | ChooseFrame) -> None:
        """Answer ``frame``, then whatever queued meanwhile, in order."""
        while frame is not None:
            try:
                try:
                    if isinstance(frame, ChooseFrame):
                        await self._choose(frame)
                    else:
                        await self._message(frame)
                except FrameError as error:
                    await self._send_error(error)
            except Exception:  # noqa: BLE001 - a send on a socket closing under us: nothing to tell
                logger.warning("replying to %s failed", frame.id, exc_info=True)
            frame = self.pending.popleft() if self.pending and not self.socket_closed else None

    async def _message(self, frame: MessageFrame) -> None:
        client_id = frame.id
        if self.state in (ConversationState.WAITING, ConversationState.AGENT) and self.conversation.is_stored:
            await self._message_for_person(frame)
            return
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

    async def _handoff_cancel(self) -> None:
        cancelled = self.conversation.is_stored and await in_pool(handoff_cancel)(conversation=self.conversation)
        if not cancelled:
            await self._send_error(FrameError("not_waiting", "No person is being asked for in this chat."))
            return
        self.state = ConversationState.BOT
        done = HandoffCancelledFrame()
        await self.send_frame(done)
        # The customer's other tabs, and the inboxes.
        event = frame_event(
            done, to=("customer", "agent"), sender=self.channel_name, conversation=str(self.conversation.id)
        )
        await self._layer_call("group_send", self.group, event)
        await self._layer_call("group_send", AGENTS_GROUP, INBOX_CHANGED)

    async def _message_for_person(self, frame: MessageFrame) -> None:
        """A person is asked for or holds the chat: the bot stays silent; the message is stored,
        acknowledged, and shown to the agents (and the customer's other tabs)."""
        try:
            stored = await in_pool(customer_message_save)(
                conversation=self.conversation, client_id=frame.id, text=frame.text
            )
        except Exception:  # noqa: BLE001 - as for answers: an error frame, never a dropped connection
            logger.exception("storing message %s for an agent failed", frame.id)
            raise FrameError("internal_error", "Sorry, something went wrong; please try again.", frame.id) from None
        await self.send_frame(
            ReceivedFrame(reply_to=frame.id, message_id=stored.message.id, duplicate=stored.duplicate)
        )
        if not stored.duplicate:
            await self._history_share([history_item(stored.message)])
            # The inbox shows each chat's latest message (and marks it new for the agent).
            await self._layer_call("group_send", AGENTS_GROUP, INBOX_CHANGED)

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

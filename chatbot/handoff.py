"""The live hand-off's writes: a person asked for, an agent taking the chat, their messages, handing
it back or closing it, and conversations of agents whose console went away returning to the queue.

States (chatbot.models.ConversationState): ``bot`` → ``waiting`` (the customer asked for a person)
→ ``agent`` (an agent took it; the bot is silent) → ``bot`` (handed back) or ``closed``. An agent
whose connection drops keeps the chat for CHATBOT_AGENT_GRACE_SECONDS, then it is ``waiting`` again.
The consumers send what changed to the sockets (chatbot.handoff_events)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from chatbot.models import (
    AgentPresence,
    Conversation,
    ConversationEvent,
    ConversationState,
    EventKind,
    Message,
    Outcome,
    Role,
)
from chatbot.opening_hours import is_open
from chatbot.pii import pii_redact
from chatbot.pipeline import reply_text
from chatbot.protocol import agent_name
from chatbot.services import BotReply


class HandoffRefused(Exception):
    """An agent's action that cannot be done (the chat is someone else's, closed, unknown)."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class AgentMessage:
    """An agent's stored message."""

    message: Message
    duplicate: bool  # the same client id was stored before (a resend)


def _held(conversation_id, agent) -> Conversation:
    conversation = Conversation.objects.select_for_update().filter(id=conversation_id).first()
    if conversation is None:
        raise HandoffRefused("not_found", "There is no such conversation.")
    if conversation.state != ConversationState.AGENT or conversation.agent_id != agent.pk:
        raise HandoffRefused("not_holding", "You are not chatting in this conversation; take it first.")
    return conversation


def conversation_take(*, conversation_id, agent) -> tuple[Conversation, bool]:
    """``agent`` takes the conversation (waiting, with the bot, or closed): the bot goes silent. Returns
    it and whether this agent held it already. Refused while another agent holds it."""
    with transaction.atomic():
        conversation = Conversation.objects.select_for_update().filter(id=conversation_id).first()
        if conversation is None:
            raise HandoffRefused("not_found", "There is no such conversation.")
        if conversation.state == ConversationState.AGENT:
            if conversation.agent_id == agent.pk:
                return conversation, True
            holder = agent_name(conversation.agent)
            raise HandoffRefused("taken", f"{holder} is already chatting with this customer.")
        now = timezone.now()
        conversation.state, conversation.agent, conversation.agent_joined_at = ConversationState.AGENT, agent, now
        conversation.outcome = Outcome.HANDED_OFF
        conversation.save(update_fields=["state", "agent", "agent_joined_at", "outcome", "updated_at"])
        ConversationEvent.objects.create(conversation=conversation, kind=EventKind.JOINED, agent=agent)
    return conversation, False


def conversation_release(*, conversation_id, agent, close: bool) -> Conversation:
    """The agent hands the conversation back to the bot, or closes it (``close``)."""
    with transaction.atomic():
        conversation = _held(conversation_id, agent)
        conversation.state = ConversationState.CLOSED if close else ConversationState.BOT
        conversation.save(update_fields=["state", "updated_at"])
        kind = EventKind.CLOSED if close else EventKind.HANDED_BACK
        ConversationEvent.objects.create(conversation=conversation, kind=kind, agent=agent)
    return conversation


def agent_message_save(*, conversation_id, agent, client_id: str, text: str) -> AgentMessage:
    """Store an agent's message in a conversation the agent holds (a resent client id: the stored one)."""
    try:
        with transaction.atomic():
            conversation = _held(conversation_id, agent)
            message = Message.objects.create(
                conversation=conversation, role=Role.AGENT, text=text, client_id=client_id, agent=agent
            )
            Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
    except IntegrityError:
        message = Message.objects.filter(conversation_id=conversation_id, client_id=client_id).first()
        if message is None or message.role != Role.AGENT:
            raise HandoffRefused("invalid_id", "That message id is taken in this conversation.") from None
        return AgentMessage(message=message, duplicate=True)
    return AgentMessage(message=message, duplicate=False)


@dataclass(frozen=True)
class CustomerMessage:
    """A customer's message stored while a person is asked for or holds the chat (no bot reply)."""

    message: Message
    duplicate: bool


def customer_message_save(*, conversation: Conversation, client_id: str, text: str) -> CustomerMessage:
    """Store a customer's message that a person, not the bot, will answer (redacted as the bot's
    exchanges are unless CHATBOT_STORE_PII). A resent client id returns the stored message."""
    stored_text = text if settings.CHATBOT_STORE_PII else pii_redact(text).text
    try:
        with transaction.atomic():
            message = Message.objects.create(
                conversation=conversation, role=Role.CUSTOMER, text=stored_text, client_id=client_id
            )
            Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
    except IntegrityError:
        message = Message.objects.filter(conversation=conversation, client_id=client_id).first()
        if message is None:
            raise
        return CustomerMessage(message=message, duplicate=True)
    return CustomerMessage(message=message, duplicate=False)


def handoff_cancel(*, conversation: Conversation) -> bool:
    """The customer no longer waits for a person: back to the bot. False if nobody was asked for
    (an agent who took the chat meanwhile keeps it)."""
    with transaction.atomic():
        cancelled = Conversation.objects.filter(pk=conversation.pk, state=ConversationState.WAITING).update(
            state=ConversationState.BOT, updated_at=timezone.now()
        )
        if cancelled:
            ConversationEvent.objects.create(conversation=conversation, kind=EventKind.CANCELLED)
    return bool(cancelled)


def handoff_reply_in_hours(reply: BotReply, *, site) -> BotReply:
    """The bot's reply to a request for a person, told (outside ``site``'s opening hours) that
    nobody is there now and that an email may be left; the request still waits in the inbox."""
    if site is None or is_open(hours=site.opening_hours, timezone=site.timezone, at=timezone.now()):
        return reply
    hours = "; ".join(line.strip() for line in site.opening_hours.splitlines() if line.strip())
    text = reply_text("handoff_closed", reply.record.language).replace("{hours}", f"{hours}, {site.timezone}")
    return replace(reply, text=text, record=replace(reply.record, handoff_hours="closed"))


def agent_seen(*, agent) -> None:
    """The agent's console is connected now (its sockets say so on a timer)."""
    AgentPresence.objects.update_or_create(agent=agent, defaults={"last_seen_at": timezone.now()})


def agents_away_release(*, now: dt.datetime | None = None) -> list[tuple[str, str]]:
    """Conversations held by agents whose console has not been seen for CHATBOT_AGENT_GRACE_SECONDS
    go back to the queue (``waiting``; the agent stays recorded as the last to hold them). Returns
    (conversation id, the agent's name) of each."""
    cutoff = (now or timezone.now()) - dt.timedelta(seconds=settings.CHATBOT_AGENT_GRACE_SECONDS)
    present = AgentPresence.objects.filter(last_seen_at__gte=cutoff).values("agent_id")
    released = []
    with transaction.atomic():
        held = (
            # Only the conversations' rows are locked ("of"): PostgreSQL locks no nullable join side.
            Conversation.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(state=ConversationState.AGENT)
            .exclude(agent_id__in=present)
            .select_related("agent")
        )
        for conversation in held:
            released.append((str(conversation.pk), agent_name(conversation.agent)))
            ConversationEvent.objects.create(
                conversation=conversation, kind=EventKind.AGENT_AWAY, agent=conversation.agent
            )
        if released:
            Conversation.objects.filter(pk__in=[pk for pk, _name in released]).update(
                state=ConversationState.WAITING, updated_at=timezone.now()
            )
    return released

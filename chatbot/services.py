"""Writes on the customer side: starting or resuming conversations, storing exchanges."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from chatbot.decision_record import DecisionRecord
from chatbot.models import Conversation, ConversationState, Message, PromptText, Role, Source


def conversation_start(*, conversation_id: str | None = None, site: str = "default") -> tuple[Conversation, bool]:
    """Resume the conversation with this id if it exists, else start a new one.

    Returns the conversation and whether it was resumed.
    """
    if conversation_id:
        try:
            conversation = Conversation.objects.filter(id=uuid.UUID(conversation_id)).first()
        except ValueError:
            conversation = None
        if conversation is not None:
            return conversation, True
    return Conversation.objects.create(site=site), False


@dataclass(frozen=True)
class BotReply:
    """What the bot says back to one customer message, ready to store, with the record of why."""

    source: str
    text: str
    record: DecisionRecord
    entry_id: int | None = None
    score: float | None = None
    citations: list[int] | None = None


@dataclass(frozen=True)
class StoredReply:
    """The bot's stored reply to a customer message."""

    message: Message
    client_id: str
    duplicate: bool  # True when this client id was answered before and the stored reply is replayed


def stored_reply(*, conversation: Conversation, client_id: str) -> Message | None:
    """The bot's reply to this conversation's customer message with ``client_id``, if answered."""
    return Message.objects.filter(
        conversation=conversation, reply_to__client_id=client_id, reply_to__role=Role.CUSTOMER
    ).first()


def exchange_save(*, conversation: Conversation, client_id: str, customer_text: str, reply: BotReply) -> StoredReply:
    """Store the customer's message and the bot's reply together (both or neither).

    A hand-off the customer asked for puts the conversation in the agents' waiting queue. If the
    same client id was stored meanwhile (a resend racing on another connection), that reply wins.
    """
    try:
        with transaction.atomic():
            question = Message.objects.create(
                conversation=conversation, role=Role.CUSTOMER, text=customer_text, client_id=client_id
            )
            message = Message.objects.create(
                conversation=conversation,
                role=Role.BOT,
                text=reply.text,
                reply_to=question,
                source=reply.source,
                entry_id=reply.entry_id,
                score=reply.score,
                retrieval=list(reply.record.retrieval),
                decision=reply.record.decision_json(),
                citations=reply.citations or [],
                timings_ms=reply.record.timings_ms,
            )
            if reply.record.prompt_texts:
                PromptText.objects.bulk_create(
                    [PromptText(sha256=digest, text=text) for digest, text in reply.record.prompt_texts.items()],
                    ignore_conflicts=True,
                )
            changes = {"updated_at": timezone.now()}
            if reply.source == Source.HANDOFF and reply.record.handoff == "requested":
                changes["state"] = ConversationState.WAITING
            Conversation.objects.filter(pk=conversation.pk).update(**changes)
    except IntegrityError:
        previous = stored_reply(conversation=conversation, client_id=client_id)
        if previous is None:
            raise
        return StoredReply(message=previous, client_id=client_id, duplicate=True)
    return StoredReply(message=message, client_id=client_id, duplicate=False)


def offered_suggestion(*, conversation: Conversation, entry_id: int) -> Message | None:
    """The latest "did you mean" message of this conversation that offered ``entry_id``."""
    for message in Message.objects.filter(conversation=conversation, source=Source.CLARIFY).order_by("-id")[:20]:
        if any(option.get("entry_id") == entry_id for option in message.decision.get("options", [])):
            return message
    return None

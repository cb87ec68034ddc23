"""Writes on the customer side: starting or resuming conversations, answering messages."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from chatbot.models import Conversation, Message, Role
from chatbot.pipeline import answer_question


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
class Reply:
    """The bot's stored reply to a customer message."""

    message: Message
    client_id: str
    duplicate: bool  # True when this client id was answered before and the stored reply is replayed


def message_answer(*, conversation: Conversation, client_id: str, text: str) -> Reply:
    """Save the customer's message, answer it through the pipeline, save the answer.

    A client id seen before in this conversation is not answered again: its stored reply is
    returned, so a client that resends after a dropped connection gets the same message id.
    """
    previous = _stored_reply(conversation=conversation, client_id=client_id)
    if previous is not None:
        return Reply(message=previous, client_id=client_id, duplicate=True)
    answer = answer_question(text)
    try:
        with transaction.atomic():
            question = Message.objects.create(
                conversation=conversation, role=Role.CUSTOMER, text=text, client_id=client_id
            )
            reply = Message.objects.create(
                conversation=conversation,
                role=Role.BOT,
                text=answer.text,
                reply_to=question,
                source=answer.source,
                entry_id=answer.entry_id,
                score=answer.score,
                retrieval=answer.retrieval,
                decision=answer.decision,
                timings_ms=answer.timings_ms,
            )
            Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
    except IntegrityError:
        # The same client id arrived on another connection at the same moment; its reply won.
        previous = _stored_reply(conversation=conversation, client_id=client_id)
        if previous is None:
            raise
        return Reply(message=previous, client_id=client_id, duplicate=True)
    return Reply(message=reply, client_id=client_id, duplicate=False)


def _stored_reply(*, conversation: Conversation, client_id: str) -> Message | None:
    return Message.objects.filter(
        conversation=conversation, reply_to__client_id=client_id, reply_to__role=Role.CUSTOMER
    ).first()

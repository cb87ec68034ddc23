"""Writes on the customer side: starting or resuming conversations, storing exchanges."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Value
from django.db.models.functions import Greatest
from django.utils import timezone

from chatbot.decision_record import DecisionRecord
from chatbot.models import (
    Conversation,
    ConversationEvent,
    ConversationState,
    EventKind,
    Feedback,
    Message,
    Outcome,
    PromptText,
    Role,
    Site,
    Source,
)
from chatbot.pii import pii_redact


def conversation_new(*, site: Site) -> Conversation:
    """A conversation for a new socket, not yet stored: it is stored with its first message, so a
    socket that opens and closes without a word leaves nothing behind."""
    return Conversation(site=site)


def conversation_resume(*, conversation_id: str, site: Site) -> tuple[Conversation, bool]:
    """The stored conversation with this id (on whichever site it started: the token is what
    grants it), or, if it has no message yet, a new one with the id on ``site``.

    The caller has checked the resume token. Returns the conversation and whether it was stored.
    """
    conversation = Conversation.objects.select_related("agent").filter(id=conversation_id).first()
    if conversation is not None:
        return conversation, True
    return Conversation(id=conversation_id, site=site), False


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
    if not conversation.is_stored:
        return None
    return Message.objects.filter(
        conversation=conversation, reply_to__client_id=client_id, reply_to__role=Role.CUSTOMER
    ).first()


def exchange_save(*, conversation: Conversation, client_id: str, customer_text: str, reply: BotReply) -> StoredReply:
    """Store the customer's message and the bot's reply together (both or neither).

    A hand-off the customer asked for puts the conversation in the agents' waiting queue. If the
    same client id was stored meanwhile (a resend racing on another connection), that reply wins.
    """
    was_stored = conversation.is_stored
    outcome = reply_outcome(reply)
    if not was_stored:
        conversation.outcome = max(conversation.outcome, outcome)
    # Inside a caller's transaction a failed statement would abort it: there, the savepoint path.
    # A hand-off also records its event and puts the chat in the inbox: rare, so the plain path.
    one_statement = (
        connection.vendor == "postgresql"
        and not connection.in_atomic_block
        and not reply.record.prompt_texts
        and _state_after(reply) is None
    )
    if one_statement:
        try:
            return _exchange_insert_one_statement(conversation, client_id, customer_text, reply)
        except IntegrityError:
            previous = stored_reply(conversation=conversation, client_id=client_id)
            if previous is None:
                raise
            return StoredReply(message=previous, client_id=client_id, duplicate=True)
    try:
        with transaction.atomic():
            if not was_stored:
                # The conversation's first message (or another tab's, racing): stored with it.
                Conversation.objects.bulk_create([conversation], ignore_conflicts=True)
            question, message = _exchange_messages(conversation, client_id, customer_text, reply)
            question.save()
            message.reply_to = question
            message.save()
            if reply.record.prompt_texts:
                PromptText.objects.bulk_create(
                    [PromptText(sha256=digest, text=text) for digest, text in reply.record.prompt_texts.items()],
                    ignore_conflicts=True,
                )
            now = timezone.now()
            Conversation.objects.filter(pk=conversation.pk).update(
                updated_at=now, outcome=Greatest("outcome", Value(outcome))
            )
            if _state_after(reply) is not None:
                # Into the agents' queue, unless an agent holds the chat already.
                queued = (
                    Conversation.objects.filter(pk=conversation.pk)
                    .exclude(state__in=[ConversationState.WAITING, ConversationState.AGENT])
                    .update(state=_state_after(reply), handoff_requested_at=now)
                )
                if queued:
                    ConversationEvent.objects.create(conversation=conversation, kind=EventKind.REQUESTED)
    except IntegrityError:
        previous = stored_reply(conversation=conversation, client_id=client_id)
        if previous is None:
            _mark_unstored(conversation, was_stored)
            raise
        return StoredReply(message=previous, client_id=client_id, duplicate=True)
    except BaseException:
        _mark_unstored(conversation, was_stored)
        raise
    return StoredReply(message=message, client_id=client_id, duplicate=False)


_MESSAGE_COLUMNS = (
    "conversation_id",
    "role",
    "text",
    "client_id",
    "source",
    "entry_id",
    "score",
    "retrieval",
    "decision",
    "citations",
    "timings_ms",
    "created_at",
)


def _exchange_messages(
    conversation: Conversation, client_id: str, customer_text: str, reply: BotReply
) -> tuple[Message, Message]:
    """The customer's message and the bot's reply to it, not yet stored."""
    question = Message(conversation=conversation, role=Role.CUSTOMER, text=customer_text, client_id=client_id)
    message = Message(
        conversation=conversation,
        role=Role.BOT,
        text=reply.text,
        source=reply.source,
        entry_id=reply.entry_id,
        score=reply.score,
        retrieval=list(reply.record.retrieval),
        decision=reply.record.decision_json(),
        citations=reply.citations or [],
        timings_ms=reply.record.timings_ms,
    )
    return question, message


def reply_outcome(reply: BotReply) -> int:
    """What this reply makes of its conversation (chatbot.models.Outcome); the conversation keeps the
    highest of its replies'."""
    return outcome_of_reply(reply.source, reply.record.handoff)


def outcome_of_reply(source: str, handoff: str | None) -> int:
    """:func:`reply_outcome` of a reply from ``source`` (with its ``handoff`` kind, for a hand-off)."""
    if source == Source.HANDOFF:
        return Outcome.HANDED_OFF if handoff == "requested" else Outcome.UNANSWERED
    return {Source.LLM: Outcome.LLM, Source.FAQ: Outcome.FAQ}.get(source, Outcome.NONE)


def _state_after(reply: BotReply) -> str | None:
    """The conversation's new state after this reply, if it changes: a hand-off the customer asked
    for puts it in the agents' waiting queue."""
    if reply.source == Source.HANDOFF and reply.record.handoff == "requested":
        return ConversationState.WAITING
    return None


def _exchange_insert_one_statement(
    conversation: Conversation, client_id: str, customer_text: str, reply: BotReply
) -> StoredReply:
    """exchange_save's common case on PostgreSQL, in one statement: both messages, and the
    conversation's update (or, with its first message, its insert), as data-modifying CTEs, atomic
    as any single statement is. Instead of BEGIN, INSERT, INSERT, UPDATE, COMMIT: one round trip,
    for every message of every customer."""
    question, message = _exchange_messages(conversation, client_id, customer_text, reply)
    now = question.created_at = message.created_at = timezone.now()
    fields = [Message._meta.get_field(name) for name in _MESSAGE_COLUMNS]  # by column (attname)
    columns = ", ".join(connection.ops.quote_name(name) for name in _MESSAGE_COLUMNS)
    values = ", ".join(["%s"] * len(_MESSAGE_COLUMNS))
    table = connection.ops.quote_name(Message._meta.db_table)
    conversations = connection.ops.quote_name(Conversation._meta.db_table)
    if conversation.is_stored:
        conversation_sql = f"UPDATE {conversations} SET updated_at = %s, outcome = GREATEST(outcome, %s) WHERE id = %s"
        conversation_params = [now, reply_outcome(reply), conversation.pk]
    else:
        # As bulk_create(ignore_conflicts=True) would: another tab may have stored it meanwhile. The
        # messages' foreign keys are checked at the end of the statement, after this insert.
        conversation_fields = Conversation._meta.concrete_fields
        conversation_columns = ", ".join(connection.ops.quote_name(field.column) for field in conversation_fields)
        conversation_values = ", ".join(["%s"] * len(conversation_fields))
        conversation_sql = f"INSERT INTO {conversations} ({conversation_columns}) VALUES ({conversation_values})"
        conversation_sql += " ON CONFLICT DO NOTHING"
        conversation_params = [
            field.get_db_prep_save(field.pre_save(conversation, add=True), connection) for field in conversation_fields
        ]
    sql = f"""
        WITH question AS (
            INSERT INTO {table} ({columns}, reply_to_id) VALUES ({values}, NULL) RETURNING id
        ), reply AS (
            INSERT INTO {table} ({columns}, reply_to_id) SELECT {values}, question.id FROM question RETURNING id
        ), touched AS (
            {conversation_sql}
        )
        SELECT question.id, reply.id FROM question, reply
    """
    params = [
        *(field.get_db_prep_save(getattr(question, field.attname), connection) for field in fields),
        *(field.get_db_prep_save(getattr(message, field.attname), connection) for field in fields),
        *conversation_params,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        question.id, message.id = cursor.fetchone()
    conversation._state.adding, conversation._state.db = False, connection.alias
    for stored in (question, message):
        stored._state.adding, stored._state.db = False, connection.alias
    message.reply_to = question
    return StoredReply(message=message, client_id=client_id, duplicate=False)


def _mark_unstored(conversation: Conversation, was_stored: bool) -> None:
    # bulk_create marked it stored, but the transaction that stored it was rolled back: the next
    # message must store it again (ignore_conflicts makes that harmless if another tab did).
    if not was_stored:
        conversation._state.adding = True


def offered_suggestion(*, conversation: Conversation, entry_id: int) -> Message | None:
    """The latest "did you mean" message of this conversation that offered ``entry_id``."""
    if not conversation.is_stored:
        return None
    for message in Message.objects.filter(conversation=conversation, source=Source.CLARIFY).order_by("-id")[:20]:
        if any(option.get("entry_id") == entry_id for option in message.decision.get("options", [])):
            return message
    return None


class FeedbackInvalid(ValueError):
    """Feedback naming no bot reply of the conversation, or a rating with nothing to rate."""


def _customer_text(text: str) -> str:
    # Free text a customer types is stored as their messages are: redacted unless CHATBOT_STORE_PII.
    return text if settings.CHATBOT_STORE_PII else pii_redact(text).text


def feedback_save(*, conversation: Conversation, message_id: int, value: str, reason: str = "") -> Feedback:
    """Store (or replace) the customer's thumbs up or down on one of this conversation's bot replies."""
    if (
        not conversation.is_stored
        or not Message.objects.filter(id=message_id, conversation=conversation, role=Role.BOT).exists()
    ):
        raise FeedbackInvalid("That message is not a reply in this conversation.")
    feedback, _ = Feedback.objects.update_or_create(
        message_id=message_id, defaults={"value": value, "reason": _customer_text(reason)}
    )
    return feedback


def rating_save(*, conversation: Conversation, score: int, comment: str = "") -> None:
    """Store the customer's 1-5 rating of the conversation (a later one replaces it)."""
    if not conversation.is_stored:
        raise FeedbackInvalid("There is nothing to rate before the first message.")
    Conversation.objects.filter(pk=conversation.pk).update(
        rating=score, rating_comment=_customer_text(comment), rated_at=timezone.now()
    )


def identity_save(*, conversation: Conversation, name: str | None, email: str | None) -> None:
    """Store who the customer is (from the host page); None leaves a field as it is. Before the
    first message it waits on the unstored conversation, which is stored with it."""
    changes = {
        field: value for field, value in (("customer_name", name), ("customer_email", email)) if value is not None
    }
    for field, value in changes.items():
        setattr(conversation, field, value)
    if conversation.is_stored and changes:
        Conversation.objects.filter(pk=conversation.pk).update(**changes)
        if email and conversation_waiting(conversation=conversation):
            # Outside opening hours the widget asks for it: the inbox shows the request has an email.
            ConversationEvent.objects.create(conversation=conversation, kind=EventKind.EMAIL_LEFT)


def conversation_waiting(*, conversation: Conversation) -> bool:
    """Whether the stored conversation waits for an agent."""
    return Conversation.objects.filter(pk=conversation.pk, state=ConversationState.WAITING).exists()

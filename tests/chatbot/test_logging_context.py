"""The conversation id on every log line of a socket (chatbot/logging_context.py), in the answer pool's
threads too (chatbot/runtime.py), and one line per answer that never holds the customer's text."""

import logging
import uuid

import pytest
import structlog
from channels.db import database_sync_to_async

from chatbot.answering import message_reply, suggestion_choose
from chatbot.logging_context import conversation_bind, conversation_unbind
from chatbot.models import Conversation, Message, Role, Source
from chatbot.runtime import in_pool
from tests.log_capture import log_lines_captured

pytestmark = pytest.mark.django_db(transaction=True)


async def no_delta(chunk: str) -> None:
    pass


@pytest.fixture
def conversation(transactional_db):
    conversation = Conversation.objects.create()
    conversation_bind(conversation.id)  # what the consumer does when its socket's conversation is known
    yield conversation
    conversation_unbind()


async def test_lines_logged_in_the_answer_pool_carry_the_sockets_conversation_id(conversation):
    def pool_work():
        logging.getLogger("kb.somewhere").warning("from a pool thread")
        structlog.stdlib.get_logger("chatbot.somewhere").info("structlog from a pool thread")

    with log_lines_captured() as lines:
        await in_pool(pool_work)()
        conversation_unbind()
        await in_pool(pool_work)()  # the pool thread keeps nothing from the earlier call
    bound, bound_structlog, unbound, unbound_structlog = lines()
    assert bound["conversation_id"] == bound_structlog["conversation_id"] == str(conversation.id)
    assert "conversation_id" not in unbound and "conversation_id" not in unbound_structlog


async def test_one_line_per_answer_with_the_decision_and_none_of_the_text(shop, conversation, caplog):
    caplog.set_level(logging.DEBUG)  # whatever any library logs at any level
    text = "where is my parcel? write to jane.doe@example.com"
    with log_lines_captured() as lines:
        stored = await message_reply(conversation=conversation, client_id="c-1", text=text, on_delta=no_delta)
        again = await message_reply(conversation=conversation, client_id="c-1", text=text, on_delta=no_delta)
    answered = [line for line in lines() if line["event"] == "message answered"]
    assert len(answered) == 2
    first, resent = answered
    assert first["conversation_id"] == str(conversation.id) and first["message_id"] == stored.message.id
    assert (first["source"], first["kind"], first["entry_id"]) == ("faq", "faq", shop["How do I track my order?"].id)
    assert first["pii"] == {"email": 1} and first["ms"] > 0
    assert again.duplicate and (resent["duplicate"], resent["message_id"]) == (True, stored.message.id)
    for fragment in ("parcel", "jane.doe", "example.com"):
        assert fragment not in str(lines()) and fragment not in caplog.text


async def test_a_chosen_suggestion_is_logged_and_timed_as_a_faq_reply(shop, conversation):
    track = shop["How do I track my order?"]
    # A "did you mean" offering the entry, stored as the bot would have.
    await database_sync_to_async(_offer)(conversation, track.id)
    with log_lines_captured() as lines:
        stored = await suggestion_choose(conversation=conversation, entry_id=track.id, client_id=str(uuid.uuid4()))
    (chosen,) = [line for line in lines() if line["event"] == "suggestion chosen"]
    assert (chosen["source"], chosen["entry_id"], chosen["message_id"]) == ("faq", track.id, stored.message.id)
    assert chosen["conversation_id"] == str(conversation.id)


def _offer(conversation: Conversation, entry_id: int) -> None:
    question = Message.objects.create(conversation=conversation, role=Role.CUSTOMER, text="track?", client_id="s")
    Message.objects.create(
        conversation=conversation,
        role=Role.BOT,
        text="Did you mean one of these?",
        reply_to=question,
        source=Source.CLARIFY,
        decision={"kind": "clarify", "options": [{"entry_id": entry_id, "question": "How do I track my order?"}]},
    )

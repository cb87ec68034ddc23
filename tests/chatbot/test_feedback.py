"""Feedback, ratings and who the customer is, over the real ASGI application (issue 11: thumbs up
or down on every answer, a 1-5 rating, SupportChat.identify)."""

import html

import pytest
from channels.db import database_sync_to_async

from chatbot.models import Conversation, Feedback
from tests.chatbot.test_consumer import ask, open_chat

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def feedback_rows():
    return list(Feedback.objects.order_by("id").values_list("message_id", "value", "reason"))


@database_sync_to_async
def conversation_row(conversation_id):
    return Conversation.objects.values("rating", "rating_comment", "rated_at", "customer_name", "customer_email").get(
        id=conversation_id
    )


async def test_thumbs_down_with_a_reason_is_stored_and_can_be_changed(shop):
    chat = await open_chat()
    await chat.receive_json_from()
    answer = await ask(chat, "where is my parcel?")
    await chat.send_json_to(
        {"type": "feedback", "message_id": answer["message_id"], "value": "down", "reason": "mail me: jane@example.com"}
    )
    assert await chat.receive_json_from() == {
        "type": "feedback_saved",
        "message_id": answer["message_id"],
        "value": "down",
    }
    # The reason is customer text: stored redacted, as messages are.
    assert await feedback_rows() == [(answer["message_id"], "down", "mail me: [email]")]
    await chat.send_json_to({"type": "feedback", "message_id": answer["message_id"], "value": "up"})
    assert (await chat.receive_json_from())["value"] == "up"
    assert await feedback_rows() == [(answer["message_id"], "up", "")]
    await chat.disconnect()


async def test_feedback_on_someone_elses_or_a_customer_message_is_refused(shop):
    other = await open_chat()
    await other.receive_json_from()
    theirs = await ask(other, "where is my parcel?")
    await other.disconnect()

    chat = await open_chat()
    await chat.receive_json_from()
    mine = await ask(chat, "can I pay with paypal?")
    for frame in (
        {"type": "feedback", "message_id": theirs["message_id"], "value": "down"},
        {"type": "feedback", "message_id": mine["message_id"] - 1, "value": "down"},  # my own question
        {"type": "feedback", "message_id": mine["message_id"], "value": "meh"},
        {"type": "feedback", "message_id": "12", "value": "up"},
        {"type": "feedback", "message_id": mine["message_id"], "value": "up", "reason": "x" * 501},
    ):
        await chat.send_json_to(frame)
        error = await chat.receive_json_from()
        assert (error["type"], error["code"]) == ("error", "invalid_feedback"), frame
    assert await feedback_rows() == []
    await chat.disconnect()


async def test_a_rating_needs_a_conversation_and_a_score_from_one_to_five(shop):
    chat = await open_chat()
    session = await chat.receive_json_from()
    await chat.send_json_to({"type": "rating", "score": 5})
    assert (await chat.receive_json_from())["code"] == "invalid_rating"  # nothing said yet
    await ask(chat, "where is my parcel?")
    for score in (0, 6, 4.5, True, "5"):
        await chat.send_json_to({"type": "rating", "score": score})
        assert (await chat.receive_json_from())["code"] == "invalid_rating", score
    await chat.send_json_to({"type": "rating", "score": 4, "comment": "quick, call 415-555-0100 if not"})
    assert await chat.receive_json_from() == {"type": "rating_saved", "score": 4}
    row = await conversation_row(session["conversation"])
    assert row["rating"] == 4 and row["rated_at"] is not None and "415-555-0100" not in row["rating_comment"]
    await chat.disconnect()


async def test_identify_before_the_first_message_is_stored_with_the_conversation(shop):
    chat = await open_chat()
    session = await chat.receive_json_from()
    await chat.send_json_to({"type": "identify", "name": "  Jane   Doe ", "email": "Jane@Example.com"})
    assert await chat.receive_json_from() == {"type": "identified"}
    assert not await database_sync_to_async(Conversation.objects.exists)()
    await ask(chat, "where is my parcel?")
    row = await conversation_row(session["conversation"])
    assert (row["customer_name"], row["customer_email"]) == ("Jane Doe", "jane@example.com")
    await chat.send_json_to({"type": "identify", "email": "not an email"})
    assert (await chat.receive_json_from())["code"] == "invalid_identity"
    await chat.send_json_to({"type": "identify", "name": "J. Doe"})
    assert (await chat.receive_json_from())["type"] == "identified"
    row = await conversation_row(session["conversation"])
    assert (row["customer_name"], row["customer_email"]) == ("J. Doe", "jane@example.com")  # email kept
    await chat.disconnect()


async def test_editors_read_thumbs_down_and_ratings_in_admin(shop, admin_client):
    chat = await open_chat()
    session = await chat.receive_json_from()
    answer = await ask(chat, "where is my parcel?")
    await chat.send_json_to({"type": "feedback", "message_id": answer["message_id"], "value": "down", "reason": "late"})
    await chat.receive_json_from()
    await chat.send_json_to({"type": "rating", "score": 2, "comment": "slow"})
    await chat.receive_json_from()
    await chat.disconnect()
    feedback_page = await database_sync_to_async(admin_client.get)("/admin/chatbot/feedback/?value__exact=down")
    assert feedback_page.status_code == 200
    assert html.escape(answer["text"][:100]) in feedback_page.content.decode()
    assert "late" in feedback_page.content.decode()
    transcript = await database_sync_to_async(admin_client.get)(
        f"/admin/chatbot/conversation/{session['conversation']}/change/"
    )
    assert transcript.status_code == 200 and "slow" in transcript.content.decode()

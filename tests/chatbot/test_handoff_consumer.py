"""The hand-off through the real ASGI application (on the tests' channel layer; the cross-process
run on Redis is tests/integration/test_handoff.py): opening hours and the email left outside them,
and who may open the agent console's socket."""

import datetime as dt

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from uvicorn.protocols.utils import ClientDisconnected

from chatbot.consumers import ChatConsumer
from chatbot.models import Conversation, ConversationEvent, Site, default_site_id
from chatbot.opening_hours import DAYS
from chatbot.protocol import PongFrame
from config.asgi import application
from ops.agent_consumer import AgentConsumer
from tests.chatbot.conftest import ORIGIN
from tests.chatbot.test_consumer import ask, open_chat

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def closed_today():
    """Opening hours of the default site that leave out today (in UTC) altogether."""
    tomorrow = DAYS[(dt.datetime.now(dt.UTC).weekday() + 1) % 7]
    default_site_id()  # a transactional test before this one flushed the migration's row
    Site.objects.filter(key="default").update(opening_hours=f"{tomorrow.title()} 09:00-17:00", timezone="UTC")


async def test_outside_opening_hours_the_customer_may_leave_an_email_and_the_request_waits(shop):
    await closed_today()
    chat = await open_chat()
    conversation = (await chat.receive_json_from())["conversation"]
    answer = await ask(chat, "I want to talk to a person")
    assert (answer["source"], answer["handoff"], answer["hours"]) == ("handoff", "requested", "closed")
    assert "opening hours" in answer["text"] and "09:00-17:00, UTC" in answer["text"]
    await chat.send_json_to({"type": "identify", "email": "Jo@Example.com"})
    assert await chat.receive_json_from() == {"type": "identified"}
    stored = await database_sync_to_async(
        lambda: (
            Conversation.objects.values_list("state", "customer_email").get(pk=conversation),
            list(ConversationEvent.objects.filter(conversation_id=conversation).values_list("kind", flat=True)),
        )
    )()
    assert stored == (("waiting", "jo@example.com"), ["requested", "email_left"])
    await chat.disconnect()


async def test_within_opening_hours_no_hours_field_is_sent(shop):
    chat = await open_chat()
    await chat.receive_json_from()
    answer = await ask(chat, "I want to talk to a person")
    assert answer["handoff"] == "requested" and "hours" not in answer
    await chat.disconnect()


@database_sync_to_async
def session_cookie(*, staff: bool, agent: bool) -> str:
    user = get_user_model().objects.create_user("someone", password="pw-12345", is_staff=staff)
    if agent:
        user.user_permissions.add(Permission.objects.get(codename="handle_conversation"))
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


@pytest.mark.parametrize(
    ("staff", "agent", "own_origin", "allowed"),
    [
        (True, True, True, True),
        (True, True, False, False),  # a page elsewhere, with an agent's cookie
        (True, False, True, False),  # staff without the agents' permission
        (False, True, True, False),  # not staff
    ],
)
async def test_who_may_open_the_agent_console(staff, agent, own_origin, allowed):
    cookie = await session_cookie(staff=staff, agent=agent)
    origin = ORIGIN[0][1] if own_origin else b"https://evil.example"
    headers = [(b"origin", origin), (b"host", b"localhost"), (b"cookie", f"sessionid={cookie}".encode())]
    console = WebsocketCommunicator(application, "/ws/agent/", headers=headers)
    connected, _ = await console.connect()
    assert connected is allowed
    if connected:
        assert (await console.receive_json_from())["type"] == "inbox"
    await console.disconnect()


async def test_an_anonymous_visitor_cannot_open_the_agent_console():
    console = WebsocketCommunicator(application, "/ws/agent/", headers=ORIGIN)
    connected, _ = await console.connect()
    assert not connected
    await console.disconnect()


async def test_a_waiting_customer_may_go_back_to_the_bot(shop):
    chat = await open_chat()
    conversation = (await chat.receive_json_from())["conversation"]
    assert (await ask(chat, "I want to talk to a person"))["handoff"] == "requested"
    # Waiting: the bot is silent, the message is kept for the person.
    waiting = await ask(chat, "Where is my parcel?", client_id="w1")
    assert (waiting["type"], waiting["reply_to"]) == ("received", "w1")
    await chat.send_json_to({"type": "handoff_cancel"})
    assert await chat.receive_json_from() == {"type": "handoff_cancelled"}
    answer = await ask(chat, "Where is my parcel?")
    assert (answer["type"], answer["source"]) == ("answer", "faq")
    await chat.send_json_to({"type": "handoff_cancel"})
    assert (await chat.receive_json_from())["code"] == "not_waiting"
    kinds = await database_sync_to_async(
        lambda: list(ConversationEvent.objects.filter(conversation_id=conversation).values_list("kind", flat=True))
    )()
    assert kinds == ["requested", "cancelled"]
    await chat.disconnect()


async def test_a_send_to_a_client_that_just_left_does_not_end_the_consumer():
    """uvicorn raises ClientDisconnected on a send after the client closed, and then never delivers
    the disconnect: a consumer ended by it would keep its connection lease (the customer's) or its
    presence (an agent's) alive for ever. The send is dropped instead; the disconnect follows."""

    async def gone(_message):
        raise ClientDisconnected

    for consumer in (ChatConsumer(), AgentConsumer()):
        consumer.base_send, consumer.socket_closed = gone, False
        await consumer.send_json({"type": "pong"})
    chat = ChatConsumer()
    chat.base_send, chat.socket_closed = gone, False
    await chat.send_frame(PongFrame())


async def test_an_email_left_outside_hours_shows_in_the_inbox_at_once(shop):
    await closed_today()
    cookie = await session_cookie(staff=True, agent=True)
    headers = [*ORIGIN, (b"cookie", f"sessionid={cookie}".encode())]
    console = WebsocketCommunicator(application, "/ws/agent/", headers=headers)
    assert (await console.connect())[0]
    assert (await console.receive_json_from())["waiting"] == []
    chat = await open_chat()
    conversation = (await chat.receive_json_from())["conversation"]
    assert (await ask(chat, "I want to talk to a person"))["hours"] == "closed"
    row = (await console.receive_json_from(timeout=5))["waiting"][0]
    assert (row["id"], row["email_left"]) == (conversation, False)
    await chat.send_json_to({"type": "identify", "email": "jo@example.com"})
    assert await chat.receive_json_from() == {"type": "identified"}
    row = (await console.receive_json_from(timeout=5))["waiting"][0]
    assert (row["email"], row["email_left"]) == ("jo@example.com", True)
    await chat.disconnect()
    await console.disconnect()


async def test_the_agent_console_answers_bad_frames_with_errors(shop):
    cookie = await session_cookie(staff=True, agent=True)
    console = WebsocketCommunicator(
        application, "/ws/agent/", headers=[*ORIGIN, (b"cookie", f"sessionid={cookie}".encode())]
    )
    assert (await console.connect())[0]
    await console.receive_json_from()  # the inbox
    for frame, code in [
        ("not json", "invalid_frame"),
        ("[" * 100_000, "invalid_frame"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "take", "conversation": "nope"}', "invalid_conversation"),
        ('{"type": "take", "conversation": "00000000-0000-0000-0000-000000000000"}', "not_found"),
        (
            '{"type": "message", "conversation": "00000000-0000-0000-0000-000000000000", "id": "a1", "text": "hi"}',
            "not_found",
        ),
        (
            '{"type": "message", "conversation": "00000000-0000-0000-0000-000000000000", "id": "", "text": "hi"}',
            "invalid_id",
        ),
    ]:
        await console.send_to(text_data=frame)
        assert (await console.receive_json_from())["code"] == code, frame[:40]
    await console.send_to(text_data='{"type": "ping"}')
    assert await console.receive_json_from() == {"type": "pong"}
    await console.disconnect()

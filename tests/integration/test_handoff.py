"""The live hand-off as customers and agents meet it (issue 15): a customer on one web process and an
agent console on another, over the real Redis channel layer. The customer asks for a person, the
agent sees the request arrive, takes it, they type and write to each other (the bot silent), a second
agent cannot take it, the agent hands back and the bot answers again; an agent whose console drops
keeps the chat for the grace period, then it is back in the queue."""

import asyncio
import json

import pytest
import websockets
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from chatbot.models import Conversation, ConversationEvent, Message
from tests.factories import entries_create, kb_embed_and_publish
from tests.integration.servers import Chat, WebServer, web_server_start
from tests.integration.test_widget_browser import in_thread

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

GRACE_SECONDS = 3


def agent_session(username: str, first_name: str) -> str:
    """A staff user with the agents' permission, signed in: their session cookie's value."""
    user = get_user_model().objects.create_user(username, f"{username}@example.com", "pw-12345", is_staff=True)
    user.first_name = first_name
    user.save()
    user.user_permissions.add(Permission.objects.get(codename="handle_conversation"))
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


class Console(Chat):
    """An agent console's socket (the frames of /ws/agent/)."""

    @classmethod
    async def open(cls, server: WebServer, session: str = "") -> "Console":
        headers = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={session}"} if session else {}
        ws = await websockets.connect(
            server.url.replace("http://", "ws://") + "ws/agent/",
            origin=server.origin,
            additional_headers=headers,
            open_timeout=30,
        )
        return cls(ws)

    async def send(self, **frame) -> None:
        await self.ws.send(json.dumps(frame))

    async def inbox_with(self, conversation: str, listed: str) -> dict:
        return await self.until(lambda f: f["type"] == "inbox" and any(r["id"] == conversation for r in f[listed]))


@pytest.fixture
def two_servers(tmp_path, transactional_db):
    entries_create()
    kb_embed_and_publish()
    extra = {"CHATBOT_AGENT_GRACE_SECONDS": str(GRACE_SECONDS)}
    first = web_server_start(tmp_path, redis_url=settings.TEST_REDIS_URL, **extra)
    second = web_server_start(tmp_path, redis_url=settings.TEST_REDIS_URL, **extra)
    yield first, second
    first.stop()
    second.stop()


def test_a_customer_on_one_process_chats_with_an_agent_on_another(two_servers):
    customer_server, agent_server = two_servers
    alice = agent_session("alice", "Alice")
    bob = agent_session("bob", "Bob")

    async def scenario():
        # Only agents: a console without a session is refused at the handshake.
        with pytest.raises(websockets.InvalidStatus):
            await Console.open(agent_server)
        console = await Console.open(agent_server, alice)
        first_inbox = await console.until(lambda f: f["type"] == "inbox")
        assert first_inbox["waiting"] == []

        chat = await Chat.open(customer_server)
        session = await chat.until(lambda f: f["type"] == "session")
        conversation = session["conversation"]
        asked = await chat.ask("c1", "I want to talk to a person")
        assert (asked["source"], asked["handoff"]) == ("handoff", "requested")
        # The request reaches the agent's inbox on the other process at once, no reload.
        row = next(r for r in (await console.inbox_with(conversation, "waiting"))["waiting"] if r["id"] == conversation)
        assert row["last_text"] == "I want to talk to a person"

        # While nobody has taken it, messages wait for the person: stored, acknowledged, no bot reply.
        await chat.ws.send(json.dumps({"type": "message", "id": "c2", "text": "It's about order 1234"}))
        received = await chat.until(lambda f: f.get("reply_to") == "c2")
        assert received["type"] == "received"

        await console.send(type="take", conversation=conversation)
        assert (await console.until(lambda f: f["type"] == "taken"))["conversation"] == conversation
        assert await chat.until(lambda f: f["type"] == "agent_joined") == {"type": "agent_joined", "agent": "Alice"}
        await console.inbox_with(conversation, "mine")

        # A second agent, on the customer's process, cannot take it from her.
        other = await Console.open(customer_server, bob)
        await other.send(type="take", conversation=conversation)
        refused = await other.until(lambda f: f["type"] == "error")
        assert refused["code"] == "taken" and "Alice" in refused["detail"]

        # Typing, both ways.
        await chat.ws.send(json.dumps({"type": "typing", "active": True}))
        typing = await console.until(lambda f: f["type"] == "event" and f["frame"]["type"] == "typing")
        assert typing["frame"] == {"type": "typing", "active": True, "from": "customer"}
        await console.send(type="typing", conversation=conversation, active=True)
        assert await chat.until(lambda f: f["type"] == "typing") == {"type": "typing", "active": True, "from": "agent"}

        # The customer writes: the agent sees it; the bot says nothing.
        await chat.ws.send(json.dumps({"type": "message", "id": "c3", "text": "Where is my parcel?"}))
        assert (await chat.until(lambda f: f.get("reply_to") == "c3"))["type"] == "received"
        seen = await console.until(
            lambda f: (
                f["type"] == "event" and any(m["text"] == "Where is my parcel?" for m in f["frame"].get("messages", []))
            )
        )
        assert seen["conversation"] == conversation
        await console.send(type="message", conversation=conversation, id="a1", text="It left our warehouse today.")
        sent = await console.until(lambda f: f["type"] == "sent")
        message = await chat.until(lambda f: f["type"] == "message")
        assert message["from"] == "agent" and message["agent"] == "Alice"
        assert message["text"] == "It left our warehouse today." and message["message_id"] == sent["message_id"]
        # A resent agent message (same id) is stored once and not shown twice.
        await console.send(type="message", conversation=conversation, id="a1", text="It left our warehouse today.")
        assert (await console.until(lambda f: f["type"] == "sent"))["message_id"] == sent["message_id"]

        # Handed back: the bot answers again.
        await console.send(type="release", conversation=conversation, close=False)
        left = await chat.until(lambda f: f["type"] == "agent_left")
        assert left == {"type": "agent_left", "agent": "Alice", "reason": "handed_back"}
        answer = await chat.ask("c4", "How do I track my order?")
        assert answer["type"] == "answer" and answer["source"] == "faq"
        await other.close()
        await console.close()
        await chat.close()
        return conversation

    conversation = asyncio.run(scenario())
    roles = list(Message.objects.filter(conversation_id=conversation).values_list("role", "client_id"))
    assert roles == [
        ("customer", "c1"),
        ("bot", None),
        ("customer", "c2"),
        ("customer", "c3"),
        ("agent", "a1"),
        ("customer", "c4"),
        ("bot", None),
    ]
    kinds = list(ConversationEvent.objects.filter(conversation_id=conversation).values_list("kind", flat=True))
    assert kinds == ["requested", "joined", "handed_back"]
    assert Conversation.objects.get(pk=conversation).state == "bot"


def test_an_agents_dropped_console_keeps_the_chat_for_the_grace_period(two_servers):
    customer_server, agent_server = two_servers
    alice = agent_session("alice", "Alice")

    async def scenario():
        chat = await Chat.open(customer_server)
        conversation = (await chat.until(lambda f: f["type"] == "session"))["conversation"]
        await chat.ask("c1", "talk to a human please")
        console = await Console.open(agent_server, alice)
        await console.inbox_with(conversation, "waiting")
        await console.send(type="take", conversation=conversation)
        await chat.until(lambda f: f["type"] == "agent_joined")

        # A reload: the console drops and comes back within the grace period; the chat stays hers.
        await console.close()
        await asyncio.sleep(0.5)
        console = await Console.open(agent_server, alice)
        await console.inbox_with(conversation, "mine")
        await asyncio.sleep(GRACE_SECONDS + 2)
        state = await asyncio.to_thread(in_thread, lambda: Conversation.objects.get(pk=conversation).state)
        assert state == "agent"

        # Gone for good: after the grace period the customer is told, and the chat waits again.
        await console.close()
        left = await chat.until(lambda f: f["type"] == "agent_left", timeout=GRACE_SECONDS + 20)
        assert left == {"type": "agent_left", "agent": "Alice", "reason": "agent_away"}
        await chat.ws.send(json.dumps({"type": "message", "id": "c2", "text": "hello?"}))
        assert (await chat.until(lambda f: f.get("reply_to") == "c2"))["type"] == "received"
        await chat.close()
        return conversation

    conversation = asyncio.run(scenario())
    assert Conversation.objects.get(pk=conversation).state == "waiting"
    kinds = list(ConversationEvent.objects.filter(conversation_id=conversation).values_list("kind", flat=True))
    assert kinds == ["requested", "joined", "agent_away"]

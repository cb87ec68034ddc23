"""Round trips through the real ASGI application (origin check, auth stack, router, consumer)."""

import json
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chatbot.models import Conversation, Message, Site
from chatbot.protocol import PROTOCOL_VERSION
from config.asgi import application
from tests.chatbot.conftest import ORIGIN
from tests.factories import kb_embed_and_publish

pytestmark = pytest.mark.django_db(transaction=True)


async def open_chat(query=""):
    communicator = WebsocketCommunicator(application, f"/ws/chat/{query}", headers=ORIGIN)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def ask(communicator, text, client_id=None):
    client_id = client_id or str(uuid.uuid4())
    await communicator.send_json_to({"type": "message", "id": client_id, "text": text})
    return await communicator.receive_json_from(timeout=20)


@database_sync_to_async
def saved_messages():
    return list(Message.objects.order_by("id").values("role", "text", "client_id", "source", "entry_id", "retrieval"))


async def test_faq_hit_answers_with_the_entry_and_saves_both_turns(shop):
    chat = await open_chat()
    session = await chat.receive_json_from()
    assert session["type"] == "session" and session["resumed"] is False
    answer = await ask(chat, "where is my parcel?", client_id="c-1")
    track = shop["How do I track my order?"]
    assert answer["type"] == "answer" and answer["reply_to"] == "c-1"
    assert (answer["source"], answer["entry_id"], answer["text"]) == ("faq", track.id, track.answer)
    assert answer["score"] >= 0.6 and isinstance(answer["message_id"], int)
    customer, bot = await saved_messages()
    assert (customer["role"], customer["text"], customer["client_id"]) == ("customer", "where is my parcel?", "c-1")
    assert (bot["role"], bot["source"], bot["entry_id"]) == ("bot", "faq", track.id)
    assert bot["retrieval"][0]["entry_id"] == track.id and len(bot["retrieval"]) == 4
    assert await database_sync_to_async(Conversation.objects.filter(id=session["conversation"]).exists)()
    await chat.disconnect()


async def test_unrelated_question_without_an_llm_offers_a_person(shop):
    chat = await open_chat()
    await chat.receive_json_from()
    answer = await ask(chat, "What will the weather be like on Mars tomorrow?")
    assert (answer["source"], answer["handoff"], answer["entry_id"]) == ("handoff", "offered", None)
    assert answer["score"] < 0.6 and "talk to a person" in answer["text"]
    chinese = await ask(chat, "请问火星明天的天气怎么样？")
    assert chinese["source"] == "handoff" and "人工" in chinese["text"]
    bot_messages = [m for m in await saved_messages() if m["role"] == "bot"]
    assert [m["source"] for m in bot_messages] == ["handoff", "handoff"]
    await chat.disconnect()


BAD_FRAMES = [
    ("not json at all", "invalid_json"),
    ('["a", "list"]', "invalid_frame"),
    ('{"type": "shout", "id": "x", "text": "hi"}', "unknown_type"),
    ('{"id": "x", "text": "hi"}', "unknown_type"),
    ('{"type": "message", "text": "hi"}', "invalid_id"),
    ('{"type": "message", "id": "", "text": "hi"}', "invalid_id"),
    ('{"type": "message", "id": 7, "text": "hi"}', "invalid_id"),
    ('{"type": "message", "id": "x"}', "missing_text"),
    ('{"type": "message", "id": "x", "text": 12}', "invalid_text"),
    ('{"type": "message", "id": "x", "text": "   \\n "}', "empty_text"),
    (json.dumps({"type": "message", "id": "x", "text": "a" * 2001}), "text_too_long"),
    ("x" * 50_000, "frame_too_large"),
]


async def test_bad_frames_get_error_frames_and_the_connection_stays_open(shop):
    chat = await open_chat()
    await chat.receive_json_from()
    for raw, code in BAD_FRAMES:
        await chat.send_to(text_data=raw)
        error = await chat.receive_json_from()
        assert (error["type"], error["code"]) == ("error", code), raw[:60]
        assert error["detail"]
    await chat.send_to(bytes_data=b"\x00\x01")
    assert (await chat.receive_json_from())["code"] == "invalid_frame"
    assert await saved_messages() == []
    # Still open and still answering.
    answer = await ask(chat, "can I pay with paypal?")
    assert answer["source"] == "faq"
    assert len(await saved_messages()) == 2
    await chat.disconnect()


async def test_resume_continues_the_conversation_with_its_history(shop):
    first = await open_chat()
    opened = await first.receive_json_from()
    conversation, token = opened["conversation"], opened["resume_token"]
    answer = await ask(first, "I forgot my password", client_id="q1")
    await first.disconnect()

    second = await open_chat(f"?conversation={conversation}&resume={token}")
    session = await second.receive_json_from()
    assert session == {
        "type": "session",
        "conversation": conversation,
        "resumed": True,
        "resume_token": token,
        "protocol": PROTOCOL_VERSION,
    }
    history = await second.receive_json_from()
    assert history["type"] == "history"
    assert [(m["role"], m["text"]) for m in history["messages"]] == [
        ("customer", "I forgot my password"),
        ("bot", answer["text"]),
    ]
    assert history["messages"][1]["reply_to"] == "q1"
    await ask(second, "and can I return a sweater?")
    assert await database_sync_to_async(Message.objects.filter(conversation_id=conversation).count)() == 4
    assert await database_sync_to_async(Conversation.objects.count)() == 1
    await second.disconnect()


@database_sync_to_async
def conversation_state(conversation_id):
    return Conversation.objects.filter(id=conversation_id).values_list("state", flat=True).first()


async def test_a_conversation_id_without_its_resume_token_reveals_and_changes_nothing(shop):
    # Issue 10: "?conversation=<someone else's id>" gave "resumed: true" and their history, and
    # "talk to a person" then changed their conversation's state.
    victim = await open_chat()
    opened = await victim.receive_json_from()
    await ask(victim, "I forgot my password", client_id="secret-question")
    await victim.disconnect()
    victim_id = opened["conversation"]
    other_token = (await _session_of_new_chat())["resume_token"]
    for query in (
        f"?conversation={victim_id}",
        f"?conversation={victim_id}&resume=",
        f"?conversation={victim_id}&resume={other_token}",
        f"?conversation={victim_id}&resume={opened['resume_token'][:-1]}x",
        f"?conversation={victim_id.upper()}&resume=forged",
    ):
        attacker = await open_chat(query)
        error = await attacker.receive_json_from()
        assert (error["type"], error["code"]) == ("error", "resume_denied"), query
        session = await attacker.receive_json_from()
        assert session["type"] == "session" and session["resumed"] is False
        assert session["conversation"] != victim_id and session["resume_token"] != opened["resume_token"]
        # The next frame is the reply to its own message: no history of the victim's came first.
        reply = await ask(attacker, "I want to talk to a person")
        assert (reply["type"], reply["handoff"]) == ("answer", "requested")
        await attacker.disconnect()
    assert await conversation_state(victim_id) == "bot"
    assert await database_sync_to_async(Message.objects.filter(conversation_id=victim_id).count)() == 2


async def _session_of_new_chat():
    chat = await open_chat()
    session = await chat.receive_json_from()
    await chat.disconnect()
    return session


async def test_malformed_conversation_starts_a_new_one(shop):
    for query in ("?conversation=not-a-uuid&resume=x", "?conversation=%00%ff&resume="):
        chat = await open_chat(query)
        error = await chat.receive_json_from()
        assert (error["type"], error["code"]) == ("error", "resume_denied")
        session = await chat.receive_json_from()
        assert session["type"] == "session" and session["resumed"] is False
        await chat.disconnect()


async def test_a_conversation_is_stored_with_its_first_message_not_at_connect(shop):
    # Issue 10: 500 connect + close left 500 empty conversations.
    for _ in range(20):
        chat = await open_chat()
        assert (await chat.receive_json_from())["type"] == "session"
        await chat.send_json_to({"type": "ping"})
        assert (await chat.receive_json_from())["type"] == "pong"
        await chat.disconnect()
    assert await database_sync_to_async(Conversation.objects.count)() == 0

    shop_eu = await database_sync_to_async(Site.objects.create)(name="Shop EU")
    chat = await open_chat(f"?site={shop_eu.key}")
    session = await chat.receive_json_from()
    # Resuming before the first message keeps the same (still unstored) conversation.
    tab = await open_chat(f"?conversation={session['conversation']}&resume={session['resume_token']}")
    tab_session = await tab.receive_json_from()
    assert (tab_session["conversation"], tab_session["resumed"]) == (session["conversation"], False)
    assert await database_sync_to_async(Conversation.objects.count)() == 0
    await ask(chat, "where is my parcel?", client_id="first")
    stored = await database_sync_to_async(Conversation.objects.get)()
    assert (str(stored.id), stored.site_id) == (session["conversation"], shop_eu.id)
    # The other tab, opened before the conversation was stored, sees the exchange and answers
    # into the same conversation.
    shared = await tab.receive_json_from(timeout=10)
    assert shared["type"] == "history" and shared["messages"][0]["client_id"] == "first"
    assert (await ask(tab, "can I pay with paypal?", client_id="second"))["source"] == "faq"
    assert await database_sync_to_async(Conversation.objects.count)() == 1
    assert await database_sync_to_async(Message.objects.filter(conversation=stored).count)() == 4
    await chat.disconnect()
    await tab.disconnect()


@pytest.fixture
def exchange_sends(monkeypatch):
    """Every conversation.exchange event the application hands to the channel layer."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    sent = []
    original = layer.group_send

    async def group_send(group, message):
        if message["type"] == "conversation.exchange":
            sent.append(message)
        await original(group, message)

    monkeypatch.setattr(layer, "group_send", group_send)
    return layer, sent


async def history_client_ids_until(tab, client_id):
    """The client ids of every history frame ``tab`` receives until one carries ``client_id``."""
    seen = []
    while client_id not in seen:
        frame = await tab.receive_json_from(timeout=10)
        if frame["type"] == "history":
            seen += [item["client_id"] for item in frame["messages"] if item["role"] == "customer"]
    return seen


async def test_a_socket_alone_in_its_conversation_shares_nothing_until_a_tab_joins(shop, exchange_sends):
    layer, sent = exchange_sends
    chat = await open_chat()
    session = await chat.receive_json_from()
    for n in (1, 2):
        assert (await ask(chat, "where is my parcel?", client_id=f"m{n}"))["type"] == "answer"
    assert sent == []  # no channel-layer call per message for a conversation nobody else has open
    tab = await open_chat(f"?conversation={session['conversation']}&resume={session['resume_token']}")
    assert (await tab.receive_json_from())["type"] == "session"
    await ask(chat, "can I pay with paypal?", client_id="m3")
    # The tab sees every message: stored before it joined (its history, and what the first socket
    # kept for a joiner) and after (live).
    assert {"m1", "m2", "m3"} <= set(await history_client_ids_until(tab, "m3"))
    assert sent  # shared now that it has company
    # Both sockets now share: the tab's message reaches the first socket.
    await ask(tab, "how do I return an item?", client_id="t1")
    assert "t1" in await history_client_ids_until(chat, "t1")
    await chat.disconnect()
    await tab.disconnect()


async def test_a_reloaded_page_that_finds_nobody_in_its_conversation_is_alone(shop, monkeypatch):
    """A resumed socket (a page reload) announces itself; if nobody heard it, it shares nothing."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    calls = []

    async def group_send_others(group, message, *, sender):
        calls.append(message["type"])
        return 0  # nobody else in the conversation

    monkeypatch.setattr(layer, "group_send_others", group_send_others, raising=False)
    chat = await open_chat()
    session = await chat.receive_json_from()
    await ask(chat, "where is my parcel?", client_id="m1")
    await chat.disconnect()
    reloaded = await open_chat(f"?conversation={session['conversation']}&resume={session['resume_token']}")
    assert (await reloaded.receive_json_from())["resumed"] is True
    assert (await reloaded.receive_json_from())["type"] == "history"
    for n in (2, 3):
        assert (await ask(reloaded, "can I pay with paypal?", client_id=f"m{n}"))["type"] == "answer"
    assert calls == ["conversation.joined"]  # its announcement, and no call per message
    await reloaded.disconnect()


async def test_a_socket_alone_shares_again_once_its_process_lost_the_channel_layer(shop, exchange_sends):
    """A tab's announcement may be lost while Redis is away: after an outage nothing is kept back."""
    layer, sent = exchange_sends
    chat = await open_chat()
    await chat.receive_json_from()
    await ask(chat, "where is my parcel?", client_id="m1")
    assert sent == []
    layer.outages = getattr(layer, "outages", 0) + 1
    await ask(chat, "can I pay with paypal?", client_id="m2")
    shared = [item["client_id"] for event in sent for item in event["frame"]["messages"] if item["role"] == "customer"]
    assert shared == ["m1", "m2"]  # what was kept back goes too
    await chat.disconnect()


async def test_repeated_client_id_is_answered_once(shop):
    chat = await open_chat()
    await chat.receive_json_from()
    first = await ask(chat, "What is your return policy?", client_id="same")
    again = await ask(chat, "What is your return policy?", client_id="same")
    assert first["duplicate"] is False and again["duplicate"] is True
    assert again["message_id"] == first["message_id"] and again["text"] == first["text"]
    assert len(await saved_messages()) == 2
    # The same client id in another conversation is a different message.
    other = await open_chat()
    await other.receive_json_from()
    assert (await ask(other, "What is your return policy?", client_id="same"))["duplicate"] is False
    assert len(await saved_messages()) == 4
    await chat.disconnect()
    await other.disconnect()


async def test_ping_gets_pong(shop):
    chat = await open_chat()
    await chat.receive_json_from()
    await chat.send_json_to({"type": "ping"})
    assert await chat.receive_json_from() == {"type": "pong"}
    await chat.disconnect()


async def test_foreign_origin_is_refused(shop):
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=[(b"origin", b"https://evil.example")])
    connected, _ = await communicator.connect()
    assert not connected


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:8000", True),  # the app's own page
        ("http://localhost:6666", False),  # issue 10: another port on the same host was accepted
        ("https://localhost:8000", False),  # another scheme
        ("https://127.0.0.1:1", False),
        ("http://127.0.0.1:8000", False),  # an allowed host, but not this page's origin
        ("https://shop.example", True),  # listed in CHATBOT_ALLOWED_ORIGINS
        ("https://shop.example:8443", False),
        ("http://shop.example", False),
        (None, False),
    ],
)
async def test_origins_are_compared_by_scheme_host_and_port(shop, settings, origin, allowed):
    settings.CHATBOT_ALLOWED_ORIGINS = ["https://shop.example"]
    headers = [(b"host", b"localhost:8000")] + ([(b"origin", origin.encode())] if origin else [])
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected is allowed
    if connected:
        await communicator.disconnect()


def test_a_host_outside_allowed_hosts_is_not_an_origin_of_ours(settings):
    from chatbot.origins import origin_allowed

    settings.ALLOWED_HOSTS = ["shop.example"]
    assert origin_allowed("https://shop.example", {"headers": [(b"host", b"shop.example")], "scheme": "wss"})
    assert not origin_allowed("http://evil.example", {"headers": [(b"host", b"evil.example")], "scheme": "ws"})


async def test_chinese_questions_are_answered_including_from_english_entries(shop):
    from kb import services

    invoice = await database_sync_to_async(services.entry_create)(
        question="可以开发票吗？", answer="可以，下单时选择开具发票即可。", language="zh", variants=["怎么开发票"]
    )
    await database_sync_to_async(kb_embed_and_publish)()
    chat = await open_chat()
    await chat.receive_json_from()
    answer = await ask(chat, "能开发票吗")
    assert (answer["source"], answer["entry_id"], answer["text"]) == ("faq", invoice.id, invoice.answer)
    cross = await ask(chat, "我忘记密码了")
    assert (cross["source"], cross["entry_id"]) == ("faq", shop["How do I reset my password?"].id)
    await chat.disconnect()


async def test_hostile_text_is_answered_and_stored_clean_and_the_socket_stays(shop):
    # Issue 10's findings: deep nesting closed the socket with 1011; a lone surrogate gave
    # internal_error; NUL was stored on SQLite and refused by PostgreSQL. The site key is cleaned too.
    shop_site = await database_sync_to_async(Site.objects.create)(name="Shop", key="shop")
    chat = await open_chat("?site=shop%00%E2%80%AE")
    session = await chat.receive_json_from()
    await chat.send_to(text_data="[" * 5000)
    nested = await chat.receive_json_from()
    assert (nested["type"], nested["code"]) == ("error", "invalid_json")
    await chat.send_to(text_data='{"type": "message", "id": "h-1", "text": "where\\u0000 is my\\u202e parcel\\ud800?"}')
    answer = await chat.receive_json_from(timeout=20)
    assert (answer["type"], answer["source"]) == ("answer", "faq")
    customer, _bot = await saved_messages()
    assert customer["text"] == "where is my parcel?"
    site_id = await database_sync_to_async(lambda: Conversation.objects.get(id=session["conversation"]).site_id)()
    assert site_id == shop_site.id
    await chat.disconnect()

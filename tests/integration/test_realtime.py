"""The chat transport as customers use it: a real ASGI server process (`make run`'s uvicorn command) on the
real Redis channel layer, sockets held idle past every timeout in the stack, a slow-streaming LLM, two web
processes on one port, Redis killed and restarted mid-conversation, and a process that has no index yet.
(An in-memory channel layer cannot show any of this: the tests of chatbot/ run on one.)"""

import asyncio
import time

import pytest
from django.conf import settings

from chatbot.models import Message
from kb.models import IndexVersion
from tests.factories import entries_create, kb_embed_and_publish
from tests.integration.servers import Chat, RedisServer, web_server_start
from tests.llm_server import reply

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

# Longer than redis-py 8's default read timeout and channels_redis's blocking receive (both 5 s), which
# together closed every idle socket after ~5 s.
IDLE_SECONDS = 15


@pytest.fixture
def shop(transactional_db):
    entries = {entry.question: entry for entry in entries_create()}
    kb_embed_and_publish()
    return entries


@pytest.fixture
def servers(tmp_path):
    """Start web servers (and Redis servers) that are stopped after the test."""
    started = []

    def web(**kwargs):
        server = web_server_start(tmp_path, **kwargs)
        started.append(server)
        return server

    def redis():
        server = RedisServer(tmp_path).start()
        started.append(server)
        return server

    web.redis = redis
    yield web
    for server in started:
        server.stop()


def stored_exactly_once(conversation_id: str, client_ids: list[str]) -> bool:
    """Each client id has exactly one customer message and one bot reply in the conversation."""
    rows = list(Message.objects.filter(conversation_id=conversation_id).values_list("role", "client_id", "reply_to"))
    customers = [client_id for role, client_id, _ in rows if role == "customer"]
    bots = [reply_to for role, _, reply_to in rows if role == "bot"]
    return sorted(customers) == sorted(client_ids) and len(bots) == len(client_ids)


def test_idle_sockets_on_two_web_processes_stay_open_and_are_answered(shop, servers):
    server = servers(redis_url=settings.TEST_REDIS_URL, processes=2)
    track = shop["How do I track my order?"]
    # Both processes serve the one port and have loaded the index.
    assert len(server.ready_pids) == 2

    async def scenario():
        chats = [await Chat.open(server) for _ in range(8)]
        sessions = [await chat.next() for chat in chats]
        await asyncio.sleep(IDLE_SECONDS)
        assert all(chat.open_ for chat in chats)
        answers = [await chat.ask(f"idle-{n}", "where is my parcel?") for n, chat in enumerate(chats)]
        for chat in chats:
            await chat.close()
        return sessions, answers

    sessions, answers = asyncio.run(scenario())
    assert [(a["type"], a["source"], a["entry_id"]) for a in answers] == [("answer", "faq", track.id)] * 8
    for n, session in enumerate(sessions):
        assert stored_exactly_once(session["conversation"], [f"idle-{n}"])
    assert "Timeout reading" not in server.log()


def test_web_processes_keep_their_long_lived_objects_out_of_full_garbage_collections(shop, servers):
    # A full collection walked the ~600,000 objects of the models and the index with the GIL held,
    # ~280 ms in which no socket of the process was served; under load one came every few seconds.
    server = servers(redis_url=settings.TEST_REDIS_URL, processes=2)
    frozen = {}
    deadline = time.monotonic() + 30
    while len(frozen) < 2 and time.monotonic() < deadline:
        status, body = server.readyz()
        frozen[body["pid"]] = body["frozen_objects"]
    assert len(frozen) == 2 and min(frozen.values()) > 100_000, frozen

    async def scenario():
        chat = await Chat.open(server)
        await chat.next()
        answer = await chat.ask("frozen-1", "where is my parcel?")
        await chat.close()
        return answer

    assert asyncio.run(scenario())["type"] == "answer"


def test_another_tab_of_the_conversation_sees_each_exchange_through_redis(shop, servers):
    server = servers(redis_url=settings.TEST_REDIS_URL, processes=2)
    password = shop["How do I reset my password?"]

    async def scenario():
        first = await Chat.open(server)
        session = await first.next()
        others = [
            await Chat.open(server, f"?conversation={session['conversation']}&resume={session['resume_token']}")
            for _ in range(3)
        ]
        for other in others:
            # The same conversation, not stored yet (it is stored with its first message).
            opened = await other.next()
            assert (opened["conversation"], opened["resumed"]) == (session["conversation"], False)
        answer = await first.ask("tab-1", "I forgot my password")
        shared = [await other.until(lambda f: f["type"] == "history") for other in others]
        return answer, shared

    answer, shared = asyncio.run(scenario())
    assert (answer["source"], answer["entry_id"]) == ("faq", password.id)
    for frame in shared:
        customer, bot = frame["messages"]
        assert (customer["role"], customer["client_id"], customer["text"]) == (
            "customer",
            "tab-1",
            "I forgot my password",
        )
        assert (bot["role"], bot["message_id"], bot["text"]) == ("bot", answer["message_id"], password.answer)


def test_tabs_opened_after_a_conversation_began_see_every_later_exchange_through_redis(shop, servers):
    """A socket alone in its conversation shares nothing until another joins; tabs joining later (on
    either web process) are announced over Redis and see every exchange from then on, both ways."""
    server = servers(redis_url=settings.TEST_REDIS_URL, processes=2)

    async def scenario():
        first = await Chat.open(server)
        session = await first.next()
        await first.ask("early-1", "where is my parcel?")
        await first.ask("early-2", "I forgot my password")
        query = f"?conversation={session['conversation']}&resume={session['resume_token']}"
        tabs = [await Chat.open(server, query) for _ in range(3)]
        histories = []
        for tab in tabs:
            assert (await tab.next())["resumed"] is True
            histories.append(await tab.until(lambda f: f["type"] == "history"))
        await first.ask("later-1", "Which payment methods do you accept?")
        for tab in tabs:
            await tab.until(lambda f: f["type"] == "history" and "later-1" in [m["client_id"] for m in f["messages"]])
        await tabs[-1].ask("from-tab", "How do I track my order?")
        await first.until(lambda f: f["type"] == "history" and "from-tab" in [m["client_id"] for m in f["messages"]])
        for chat in (first, *tabs):
            await chat.close()
        return session, histories

    session, histories = asyncio.run(scenario())
    for history in histories:
        assert [m["client_id"] for m in history["messages"] if m["role"] == "customer"] == ["early-1", "early-2"]
    assert stored_exactly_once(session["conversation"], ["early-1", "early-2", "later-1", "from-tab"])


def test_a_reloaded_page_alone_in_its_conversation_still_reaches_a_tab_opened_later(shop, servers):
    """A page reload resumes the conversation; alone there, it shares nothing, until a tab joins."""
    server = servers(redis_url=settings.TEST_REDIS_URL, processes=2)

    async def scenario():
        first = await Chat.open(server)
        session = await first.next()
        await first.ask("before-reload", "where is my parcel?")
        await first.close()
        query = f"?conversation={session['conversation']}&resume={session['resume_token']}"
        reloaded = await Chat.open(server, query)
        assert (await reloaded.next())["resumed"] is True
        await reloaded.ask("alone-1", "I forgot my password")
        tab = await Chat.open(server, query)
        assert (await tab.next())["resumed"] is True
        await reloaded.ask("after-tab", "Which payment methods do you accept?")
        seen = await tab.until(
            lambda f: f["type"] == "history" and "after-tab" in [m["client_id"] for m in f["messages"]]
        )
        for chat in (reloaded, tab):
            await chat.close()
        return session, seen

    session, seen = asyncio.run(scenario())
    assert "after-tab" in [m["client_id"] for m in seen["messages"]]
    assert stored_exactly_once(session["conversation"], ["before-reload", "alone-1", "after-tab"])


def test_an_llm_answer_streaming_for_more_than_ten_seconds_arrives_whole(shop, servers, llm_server):
    payment = shop["Which payment methods do you accept?"]
    chunks = [f"Part {n} of a slow answer. " for n in range(12)]
    llm_server.default = lambda body: reply(chunks=[f"SOURCES: {payment.id}\n", *chunks], chunk_delay=1.0)
    server = servers(redis_url=settings.TEST_REDIS_URL, llm_url=llm_server.base_url, LLM_TIMEOUT="40")

    async def scenario():
        chat = await Chat.open(server)
        await chat.next()
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await chat.ask("slow-1", "Can I settle the bill with something other than cash?", timeout=60)
        return answer, chat.frames, loop.time() - started

    answer, frames, seconds = asyncio.run(scenario())
    assert seconds > 10
    deltas = [frame["text"] for frame in frames if frame["type"] == "delta"]
    assert (answer["type"], answer["source"], answer["citations"]) == ("answer", "llm", [payment.id])
    assert answer["text"] == "".join(chunks).strip() and "".join(deltas).strip() == answer["text"]
    assert len(deltas) >= 10


def test_redis_killed_and_restarted_mid_conversation_loses_and_doubles_nothing(shop, servers):
    redis = servers.redis()
    server = servers(redis_url=redis.url)
    track, password = shop["How do I track my order?"], shop["How do I reset my password?"]

    async def scenario():
        customer = await Chat.open(server)
        session = await customer.next()
        tab = await Chat.open(server, f"?conversation={session['conversation']}&resume={session['resume_token']}")
        assert (await tab.next())["type"] == "session"
        sent = []

        async def ask(text):
            client_id = f"r-{len(sent)}"
            sent.append(client_id)
            return await customer.ask(client_id, text)

        before = await ask("where is my parcel?")
        await tab.until(lambda f: f["type"] == "history" and f["messages"][0]["client_id"] == "r-0")

        redis.kill()
        await asyncio.sleep(2)
        during = await ask("I forgot my password")  # answering needs no Redis: the socket stays
        await asyncio.sleep(IDLE_SECONDS / 3)
        redis.start()

        # Once the layer is back (and has re-joined the conversation's group), the tab sees exchanges again.
        # (An exchange's event may reach the tab late, once its receive loop's backoff ends: any
        # exchange made after the restart counts.)
        seen_after, answered_after = None, []
        for _ in range(20):
            answered_after.append((await ask("where is my parcel?"))["message_id"])
            try:
                frame = await tab.until(
                    lambda f: f["type"] == "history" and f["messages"][-1]["message_id"] in answered_after, timeout=2
                )
            except AssertionError:
                continue
            seen_after = (answered_after, frame)
            break
        assert customer.open_ and tab.open_
        # A reload resumes the conversation with every exchange once.
        reloaded = await Chat.open(server, f"?conversation={session['conversation']}&resume={session['resume_token']}")
        await reloaded.next()
        history = await reloaded.until(lambda f: f["type"] == "history")
        for chat in (customer, tab, reloaded):
            await chat.close()
        return session, sent, before, during, seen_after, history

    session, sent, before, during, seen_after, history = asyncio.run(scenario())
    assert (before["entry_id"], during["entry_id"]) == (track.id, password.id)
    assert seen_after is not None, "the tab never saw an exchange after Redis came back:\n" + server.log()[-3000:]
    answered_after, frame = seen_after
    customer_turn, bot_turn = frame["messages"]
    assert bot_turn["message_id"] in answered_after and customer_turn["text"] == "where is my parcel?"
    customer_ids = [item["client_id"] for item in history["messages"] if item["role"] == "customer"]
    assert customer_ids == sent
    assert stored_exactly_once(session["conversation"], sent)
    log = server.log()
    assert "Redis unreachable" in log and "reachable again" in log
    # Flood control counts in the same Redis: while it was away, it let every frame through.
    assert "flood control lets everything through" in log


def test_a_process_without_an_index_says_not_ready_and_the_message_is_answered_when_resent(servers, transactional_db):
    entries_create()  # in the database, not yet embedded: no index is published
    assert not IndexVersion.objects.exists()
    server = servers(redis_url=settings.TEST_REDIS_URL, wait_ready=False, CHATBOT_NOT_READY_WAIT_SECONDS="1")

    async def until_serving():
        for _ in range(300):
            try:
                return await Chat.open(server)
            except OSError:
                await asyncio.sleep(0.3)
        raise AssertionError(server.log()[-3000:])

    async def first_try():
        chat = await until_serving()
        session = await chat.next()
        status = server.readyz()
        frame = await chat.ask("early-1", "where is my parcel?")
        await chat.close()
        return session, status, frame

    session, status, frame = asyncio.run(first_try())
    assert status[0] == 503 and status[1]["ready"] is False
    assert (frame["type"], frame["code"]) == ("error", "not_ready") and frame["retry_after_ms"] > 0
    assert not Message.objects.exists()

    kb_embed_and_publish()

    async def resend():
        for _ in range(100):
            if server.readyz()[0] == 200:
                break
            await asyncio.sleep(0.1)
        chat = await Chat.open(server, f"?conversation={session['conversation']}&resume={session['resume_token']}")
        await chat.next()
        answer = await chat.ask("early-1", "where is my parcel?")
        await chat.close()
        return answer

    answer = asyncio.run(resend())
    assert (answer["type"], answer["source"]) == ("answer", "faq")
    assert stored_exactly_once(session["conversation"], ["early-1"])

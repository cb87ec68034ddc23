"""Storing an exchange (chatbot.services.exchange_save): the first message stores the conversation;
on PostgreSQL an exchange (the conversation's insert or update included) is one statement, and must
store exactly what the transaction path does."""

from importlib import import_module

import pytest
from django.apps import apps as django_apps
from django.db import connection, transaction

from chatbot.decision_record import DecisionRecord
from chatbot.decisions import Kind
from chatbot.models import Conversation, Message, Outcome, Site, default_site_id
from chatbot.services import BotReply, conversation_new, exchange_save

pytestmark = pytest.mark.django_db(transaction=True)

COMPARED = ("role", "text", "client_id", "source", "entry_id", "score", "retrieval", "decision", "citations")


def reply(text: str, *, source: str = "faq", handoff: str | None = None) -> BotReply:
    record = DecisionRecord(
        kind=Kind.HANDOFF if source == "handoff" else Kind.FAQ,
        reason="test",
        language="en",
        retrieval=({"entry_id": None, "score": 0.5},),
        handoff=handoff,
        timings_ms={"total": 1.5},
    )
    return BotReply(source=source, text=text, record=record, score=0.5, citations=[])


def stored(message: Message) -> dict:
    return {name: getattr(message, name) for name in COMPARED}


def test_every_exchange_is_stored_alike_whichever_way_it_is_written():
    conversation = conversation_new(site=Site.objects.get(pk=default_site_id()))
    assert not Conversation.objects.exists()
    first = exchange_save(conversation=conversation, client_id="c1", customer_text="hello", reply=reply("hi"))
    assert Conversation.objects.get().id == conversation.id
    second = exchange_save(conversation=conversation, client_id="c2", customer_text="hello", reply=reply("hi"))

    for result, client_id in ((first, "c1"), (second, "c2")):
        assert not result.duplicate and result.message.reply_to.client_id == client_id
        from_db = Message.objects.select_related("reply_to").get(id=result.message.id)
        # What the caller holds is what was stored, reply_to included.
        assert stored(from_db) == stored(result.message)
        assert stored(from_db.reply_to) == stored(result.message.reply_to)
        assert from_db.timings_ms == {"total": 1.5}
    first_row, second_row = (Message.objects.get(id=r.message.id) for r in (first, second))
    assert {k: v for k, v in stored(first_row).items()} == stored(second_row)
    assert Message.objects.filter(conversation=conversation).count() == 4


def test_a_resent_client_id_returns_the_stored_reply_and_a_request_for_a_person_waits():
    conversation = conversation_new(site=Site.objects.get(pk=default_site_id()))
    exchange_save(conversation=conversation, client_id="c1", customer_text="hello", reply=reply("hi"))
    original = exchange_save(conversation=conversation, client_id="c2", customer_text="where?", reply=reply("there"))
    again = exchange_save(conversation=conversation, client_id="c2", customer_text="where?", reply=reply("other"))
    assert again.duplicate and again.message.id == original.message.id and again.message.text == "there"
    assert Message.objects.count() == 4

    before = Conversation.objects.get().updated_at
    exchange_save(
        conversation=conversation,
        client_id="c3",
        customer_text="a person please",
        reply=reply("someone will join", source="handoff", handoff="requested"),
    )
    row = Conversation.objects.get()
    assert row.state == "waiting" and row.updated_at > before
    exchange_save(conversation=conversation, client_id="c4", customer_text="thanks", reply=reply("welcome"))
    assert Conversation.objects.get().state == "waiting"


def conversation_row(conversation_id) -> dict:
    row = Conversation.objects.filter(id=conversation_id).values().get()
    return {name: value for name, value in row.items() if name not in ("id", "created_at", "updated_at")}


def test_a_first_message_stores_its_conversation_as_the_transaction_path_does():
    site = Site.objects.get(pk=default_site_id())
    one_statement = conversation_new(site=site)
    exchange_save(conversation=one_statement, client_id="c1", customer_text="hello", reply=reply("hi"))
    with transaction.atomic():  # inside a transaction: the savepoint path, bulk_create
        in_transaction = conversation_new(site=site)
        exchange_save(conversation=in_transaction, client_id="c1", customer_text="hello", reply=reply("hi"))
    assert one_statement.is_stored and in_transaction.is_stored
    assert conversation_row(one_statement.id) == conversation_row(in_transaction.id)
    row = Conversation.objects.get(id=one_statement.id)
    assert row.created_at is not None and row.updated_at >= row.created_at and row.state == "bot"
    # The conversation object is stored now: the next message updates it.
    exchange_save(conversation=one_statement, client_id="c2", customer_text="more", reply=reply("sure"))
    assert Message.objects.filter(conversation_id=one_statement.id).count() == 4


def test_two_tabs_storing_a_first_message_share_one_conversation():
    site = Site.objects.get(pk=default_site_id())
    first_tab = conversation_new(site=site)
    # Another tab resumed the conversation before it was stored: its own object, not stored either.
    second_tab = Conversation(id=first_tab.id, site=site)
    assert not first_tab.is_stored and not second_tab.is_stored
    exchange_save(conversation=first_tab, client_id="tab1-1", customer_text="hello", reply=reply("hi"))
    exchange_save(conversation=second_tab, client_id="tab2-1", customer_text="hi there", reply=reply("hello"))
    assert Conversation.objects.filter(id=first_tab.id).count() == 1
    assert sorted(
        Message.objects.filter(conversation_id=first_tab.id, role="customer").values_list("client_id", flat=True)
    ) == ["tab1-1", "tab2-1"]


def test_a_first_message_that_asks_for_a_person_puts_the_conversation_in_waiting():
    conversation = conversation_new(site=Site.objects.get(pk=default_site_id()))
    exchange_save(
        conversation=conversation,
        client_id="c1",
        customer_text="a person please",
        reply=reply("someone will join", source="handoff", handoff="requested"),
    )
    assert Conversation.objects.get(id=conversation.id).state == "waiting"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement path is PostgreSQL's")
def test_on_postgresql_a_first_message_is_one_statement(django_assert_num_queries):
    conversation = conversation_new(site=Site.objects.get(pk=default_site_id()))
    with django_assert_num_queries(1):
        exchange_save(conversation=conversation, client_id="c1", customer_text="hello", reply=reply("hi"))
    with django_assert_num_queries(1):
        exchange_save(conversation=conversation, client_id="c2", customer_text="more", reply=reply("sure"))


@pytest.mark.parametrize("in_transaction", [False, True], ids=["one statement", "transaction"])
def test_the_conversation_keeps_its_most_telling_outcome(in_transaction):
    """Conversation.outcome only rises: FAQ < LLM < unanswered (a person offered) < handed off."""
    conversation = conversation_new(site=Site.objects.get(pk=default_site_id()))

    def save(client_id, **kwargs):
        if in_transaction:  # inside a caller's transaction exchange_save takes the savepoint path
            with transaction.atomic():
                exchange_save(
                    conversation=conversation, client_id=client_id, customer_text="q", reply=reply("a", **kwargs)
                )
        else:
            exchange_save(conversation=conversation, client_id=client_id, customer_text="q", reply=reply("a", **kwargs))
        return Conversation.objects.get(pk=conversation.pk).outcome

    assert save("c1") == Outcome.FAQ  # the first message stores the conversation with it
    assert save("c2", source="llm") == Outcome.LLM
    assert save("c3") == Outcome.LLM
    assert save("c4", source="handoff", handoff="offered") == Outcome.UNANSWERED
    assert save("c5", source="handoff", handoff="requested") == Outcome.HANDED_OFF
    assert save("c6") == Outcome.HANDED_OFF


def test_the_migration_gives_stored_conversations_their_outcome():
    backfill = import_module("chatbot.migrations.0013_conversation_outcome").outcome_backfill
    made = {}
    for name, replies, state in [
        ("none", [], "bot"),
        ("faq", [("faq", None)], "bot"),
        ("llm", [("faq", None), ("llm", None)], "bot"),
        ("unanswered", [("llm", None), ("handoff", "offered"), ("faq", None)], "bot"),
        ("legacy offer", [("handoff", None)], "bot"),  # first-release hand-offs have no kind
        ("requested", [("handoff", "requested")], "bot"),
        ("with an agent", [("faq", None)], "agent"),
    ]:
        conversation = Conversation.objects.create(state=state)
        for source, handoff in replies:
            decision = {"handoff": handoff} if handoff else {}
            Message.objects.create(conversation=conversation, role="bot", text="a", source=source, decision=decision)
        made[name] = conversation.pk
    backfill(django_apps, None)
    outcomes = dict(Conversation.objects.values_list("pk", "outcome"))
    assert {name: outcomes[pk] for name, pk in made.items()} == {
        "none": Outcome.NONE,
        "faq": Outcome.FAQ,
        "llm": Outcome.LLM,
        "unanswered": Outcome.UNANSWERED,
        "legacy offer": Outcome.UNANSWERED,
        "requested": Outcome.HANDED_OFF,
        "with an agent": Outcome.HANDED_OFF,
    }

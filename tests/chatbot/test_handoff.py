"""The hand-off's writes (chatbot.handoff) and a site's opening hours (chatbot.opening_hours)."""

import datetime as dt

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.utils import timezone

from chatbot import handoff
from chatbot.models import AgentPresence, Conversation, ConversationEvent, ConversationState, Message, Site
from chatbot.opening_hours import OpeningHoursInvalid, is_open, opening_hours_parse

pytestmark = pytest.mark.django_db


@pytest.fixture
def agents():
    make = get_user_model().objects.create_user
    return make("alice", first_name="Alice", is_staff=True), make("bob", is_staff=True)


def waiting_conversation() -> Conversation:
    conversation = Conversation.objects.create(state=ConversationState.WAITING, handoff_requested_at=timezone.now())
    Message.objects.create(conversation=conversation, role="customer", text="a person please", client_id="c1")
    return conversation


def test_one_agent_takes_a_chat_and_another_cannot(agents):
    alice, bob = agents
    conversation = waiting_conversation()
    taken, already = handoff.conversation_take(conversation_id=conversation.pk, agent=alice)
    assert (taken.state, taken.agent_id, already) == ("agent", alice.pk, False)
    assert handoff.conversation_take(conversation_id=conversation.pk, agent=alice)[1] is True
    with pytest.raises(handoff.HandoffRefused) as refused:
        handoff.conversation_take(conversation_id=conversation.pk, agent=bob)
    assert refused.value.code == "taken" and "Alice" in refused.value.detail
    with pytest.raises(handoff.HandoffRefused) as refused:
        handoff.agent_message_save(conversation_id=conversation.pk, agent=bob, client_id="b1", text="hi")
    assert refused.value.code == "not_holding"
    assert list(conversation.events.values_list("kind", flat=True)) == ["joined"]


def test_agent_messages_are_stored_once_per_id(agents):
    alice, _bob = agents
    conversation = waiting_conversation()
    handoff.conversation_take(conversation_id=conversation.pk, agent=alice)
    first = handoff.agent_message_save(conversation_id=conversation.pk, agent=alice, client_id="a1", text="Hello!")
    again = handoff.agent_message_save(conversation_id=conversation.pk, agent=alice, client_id="a1", text="Hello!")
    assert (first.duplicate, again.duplicate, again.message.pk) == (False, True, first.message.pk)
    # The customer's own ids cannot be taken over by an agent's message.
    with pytest.raises(handoff.HandoffRefused):
        handoff.agent_message_save(conversation_id=conversation.pk, agent=alice, client_id="c1", text="x")
    assert list(conversation.messages.values_list("role", "agent__username")) == [
        ("customer", None),
        ("agent", "alice"),
    ]


def test_hand_back_and_close(agents):
    alice, _bob = agents
    conversation = waiting_conversation()
    handoff.conversation_take(conversation_id=conversation.pk, agent=alice)
    assert handoff.conversation_release(conversation_id=conversation.pk, agent=alice, close=False).state == "bot"
    with pytest.raises(handoff.HandoffRefused):  # no longer hers
        handoff.conversation_release(conversation_id=conversation.pk, agent=alice, close=True)
    handoff.conversation_take(conversation_id=conversation.pk, agent=alice)
    assert handoff.conversation_release(conversation_id=conversation.pk, agent=alice, close=True).state == "closed"
    assert list(conversation.events.values_list("kind", flat=True)) == ["joined", "handed_back", "joined", "closed"]


def test_an_away_agents_chats_go_back_to_the_queue_after_the_grace_period(agents, settings):
    settings.CHATBOT_AGENT_GRACE_SECONDS = 60
    alice, bob = agents
    hers, his = waiting_conversation(), waiting_conversation()
    handoff.conversation_take(conversation_id=hers.pk, agent=alice)
    handoff.conversation_take(conversation_id=his.pk, agent=bob)
    now = timezone.now()
    AgentPresence.objects.create(agent=alice, last_seen_at=now - dt.timedelta(seconds=30))  # within the grace
    AgentPresence.objects.create(agent=bob, last_seen_at=now - dt.timedelta(seconds=90))  # past it
    assert handoff.agents_away_release(now=now) == [(str(his.pk), "bob")]
    assert Conversation.objects.get(pk=his.pk).state == "waiting"
    assert Conversation.objects.get(pk=hers.pk).state == "agent"
    assert ConversationEvent.objects.filter(conversation=his, kind="agent_away").count() == 1
    # Later, with Alice gone too.
    assert handoff.agents_away_release(now=now + dt.timedelta(seconds=60)) == [(str(hers.pk), "Alice")]


def test_customer_messages_for_a_person_are_stored_once_and_redacted(settings):
    settings.CHATBOT_STORE_PII = False
    conversation = waiting_conversation()
    stored = handoff.customer_message_save(conversation=conversation, client_id="c2", text="mail me at jo@example.com")
    again = handoff.customer_message_save(conversation=conversation, client_id="c2", text="mail me at jo@example.com")
    assert again.duplicate and again.message.pk == stored.message.pk
    assert "jo@example.com" not in stored.message.text
    assert not conversation.messages.filter(role="bot").exists()


@pytest.mark.parametrize(
    ("hours", "local", "expected"),
    [
        ("", "2026-11-30 03:00", True),  # empty: always open
        ("Mon-Fri 09:00-17:30", "2026-11-30 09:00", True),  # a Monday
        ("Mon-Fri 09:00-17:30", "2026-11-30 17:30", False),  # the end is not in
        ("Mon-Fri 09:00-17:30", "2026-12-05 10:00", False),  # a Saturday
        ("Mon 09:00-12:00, 13:00-17:00", "2026-11-30 12:30", False),
        ("Mon 09:00-12:00, 13:00-17:00", "2026-11-30 13:00", True),
        ("Fri-Mon 00:00-24:00", "2026-12-06 23:59", True),  # wraps over the weekend; a Sunday
        ("Sat,Sun 10:00-14:00", "2026-12-06 11:00", True),
    ],
)
def test_opening_hours(hours, local, expected):
    zone = "Europe/London"
    at = dt.datetime.fromisoformat(local).replace(tzinfo=dt.UTC)  # London is on UTC in winter
    assert is_open(hours=hours, timezone=zone, at=at) is expected


@pytest.mark.parametrize(
    "hours", ["Mon 9-5", "Funday 09:00-10:00", "Mon 18:00-09:00", "Mon 25:00-26:00", "09:00-17:00"]
)
def test_unreadable_opening_hours_are_refused_in_the_admin_form(hours):
    with pytest.raises(OpeningHoursInvalid):
        opening_hours_parse(hours)
    site = Site(name="Shop", opening_hours=hours, timezone="Europe/London")
    with pytest.raises(ValidationError) as error:
        site.clean()
    assert "opening_hours" in error.value.message_dict


def test_an_unknown_time_zone_is_refused():
    with pytest.raises(ValidationError) as error:
        Site(name="Shop", timezone="Mars/Olympus").clean()
    assert "timezone" in error.value.message_dict

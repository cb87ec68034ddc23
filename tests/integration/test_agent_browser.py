"""The live hand-off in headless Chromium (issue 15): a customer in the widget on one page, an agent
in the inbox on another, against the real ASGI server on Redis. The customer asks for a person; the
request rings into the inbox; the agent takes it, sees the history with the bot's reasoning, answers
with a canned reply from the FAQ; the customer sees the agent join, type and write; the agent hands
back and the bot answers again. Saves the README's inbox screenshot."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from chatbot.models import Message
from tests.axe_summary import axe_run, axe_summary
from tests.integration.servers import web_server_start
from tests.integration.test_widget_browser import (
    SCREENSHOTS,
    WAIT_MS,
    ask,
    chromium,  # noqa: F401 - the fixture
    in_thread,
    open_page,
    shop_with_site,
    stop_after,  # noqa: F401 - the fixture
    widget,
)

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def test_an_agent_takes_over_from_the_bot_and_hands_back(tmp_path, chromium, stop_after):  # noqa: F811
    entries, _site = shop_with_site([])
    agent = get_user_model().objects.create_user(
        "alice", "alice@example.com", "pw-alice-12345", is_staff=True, first_name="Alice"
    )
    # The permissions the Agents group holds (a transactional test's flush drops the migrations' groups).
    agent.user_permissions.add(*Permission.objects.filter(codename__in=["handle_conversation", "view_conversation"]))
    agent.user_permissions.add(Permission.objects.get(codename="view_entry"))
    server = web_server_start(tmp_path, redis_url=settings.TEST_REDIS_URL)
    stop_after(server)

    browser = chromium()
    inbox = open_page(browser, f"{server.url}admin/login/?next=/ops/inbox/")
    inbox.fill("#id_username", "alice")
    inbox.fill("#id_password", "pw-alice-12345")
    inbox.click("input[type=submit]")
    inbox.wait_for_url(f"{server.url}ops/inbox/")
    inbox.locator("#inbox-connection", has_text="Connected").wait_for(timeout=WAIT_MS)
    # The ring is Web Audio: count the tones started.
    inbox.evaluate(
        "() => { window.rings = 0; const start = OscillatorNode.prototype.start;"
        " OscillatorNode.prototype.start = function (...a) { window.rings++; return start.apply(this, a); }; }"
    )

    customer = open_page(browser, server.url)
    widget(customer, ".launcher").click()
    ask(customer, "Where is my parcel?")
    widget(customer, ".log > .msg.bot:not(.greeting)").first.wait_for(timeout=WAIT_MS)
    ask(customer, "I want to talk to a person")
    widget(customer, ".msg.bot").filter(has_text="asked a member of our team").wait_for(timeout=WAIT_MS)
    # The customer sees that a person is on the way (and could go back to the bot).
    waiting = widget(customer, ".waiting-person")
    waiting.wait_for(timeout=WAIT_MS)
    assert "Back to the assistant" in waiting.inner_text()

    # The request arrives in the inbox by itself, with a sound and the count in the tab's title.
    row = inbox.locator("#list-waiting button.row")
    row.first.wait_for(timeout=WAIT_MS)
    assert "I want to talk to a person" in row.first.inner_text()
    inbox.wait_for_function("document.title.startsWith('(1) ')", timeout=WAIT_MS)
    assert inbox.evaluate("window.rings") == 1

    row.first.click()
    # The history, with the bot's reasoning for its FAQ answer.
    turn = inbox.locator("#chat-log .turn.bot").first
    turn.wait_for(timeout=WAIT_MS)
    assert "How do I track my order?" in turn.locator(".why").inner_text()
    inbox.click("#take")
    inbox.locator("#reply-form").wait_for(state="visible", timeout=WAIT_MS)
    widget(customer, ".msg.notice").filter(has_text="Alice joined the chat.").wait_for(timeout=WAIT_MS)
    assert widget(customer, ".waiting-person").count() == 0

    # Typing both ways.
    widget(customer, "textarea#sc-input").press_sequentially("my order", delay=20)
    inbox.locator("#customer-typing", has_text="typing").wait_for(timeout=WAIT_MS)
    widget(customer, "textarea#sc-input").fill("")
    inbox.locator("#reply-text").press_sequentially("Let me check", delay=20)
    widget(customer, ".agent-typing").wait_for(timeout=WAIT_MS)
    inbox.fill("#reply-text", "")

    # The customer writes to the person; the bot stays silent.
    ask(customer, "It was due on Monday")
    inbox.locator("#chat-log .turn.customer", has_text="It was due on Monday").wait_for(timeout=WAIT_MS)

    # A canned reply from the FAQ, searched as the bot searches.
    inbox.fill("#canned-q", "where is my package")
    canned = inbox.locator("#canned-results button.canned-reply").first
    canned.wait_for(timeout=WAIT_MS)
    assert "How do I track my order?" in canned.inner_text()
    canned.click()
    track_answer = entries["How do I track my order?"].answer
    assert inbox.input_value("#reply-text") == track_answer
    inbox.click("#send")
    agent_bubble = widget(customer, ".msg.agent")
    agent_bubble.first.wait_for(timeout=WAIT_MS)
    assert "Alice" in agent_bubble.first.inner_text()
    assert track_answer.split("\n")[0][:40] in agent_bubble.first.inner_text()
    # axe-core on the inbox as the agent works in it.
    results = axe_run(inbox)
    assert results.violations_count == 0, axe_summary(results)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    inbox.screenshot(path=str(SCREENSHOTS / "ops-inbox.png"), full_page=True)
    customer.screenshot(path=str(tmp_path / "customer-with-agent.png"))

    # Handed back: the customer is told, and the bot answers again.
    inbox.click("#hand-back")
    widget(customer, ".msg.notice").filter(has_text="handed you back").wait_for(timeout=WAIT_MS)
    bots_before = widget(customer, ".log > .msg.bot:not(.greeting)").count()
    ask(customer, "Which payment methods do you accept?")
    widget(customer, ".log > .msg.bot:not(.greeting)").nth(bots_before).wait_for(timeout=WAIT_MS)
    payment = entries["Which payment methods do you accept?"].answer
    assert widget(customer, ".log > .msg.bot:not(.greeting) .body").last.inner_text().strip() == payment.strip()

    conversation_id = customer.evaluate("JSON.parse(localStorage.getItem(Object.keys(localStorage)[0])).conversation")
    roles = in_thread(
        lambda: list(Message.objects.filter(conversation_id=conversation_id).values_list("role", flat=True))
    )
    assert roles == ["customer", "bot", "customer", "bot", "customer", "agent", "customer", "bot"]

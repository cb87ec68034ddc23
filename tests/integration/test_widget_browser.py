"""The chat widget (issue 11) in headless Chromium against the real ASGI server: embedded by its tag on a
customer's site on another origin under a strict CSP, answering English and Chinese questions, a streamed
LLM answer, "did you mean", feedback and rating, XSS shown as text, the host-page API and events, axe-core,
phone width, a refused origin; then a dropped connection and a reload that lose and double nothing, and the
demo page as a host page of the same widget."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings
from django.db import connections

from chatbot.models import Conversation, Message, Site
from tests.axe_summary import axe_run, axe_summary
from tests.factories import entries_create, kb_embed_and_publish
from tests.integration.servers import web_server_start
from tests.integration.widget_hosts import HostSite, TcpProxy
from tests.llm_server import reply

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
WAIT_MS = 20_000
SCREENSHOTS = settings.BASE_DIR / "docs" / "screenshots"
XSS_ANSWER = (
    'Use code **SAVE10**. <img src=x onerror="window.pwned=1"><script>window.pwned=2</script> '
    "[click here](javascript:window.pwned=3) or see https://example.com/help"
)
XSS_MESSAGE = '<img src=x onerror="window.pwned=4">hello'
EXTRA_ENTRIES = [
    {
        "question": "可以开发票吗？",
        "answer": "可以，下单时选择“需要发票”即可。",
        "language": "zh",
        "variants": ["怎么开发票", "能开发票吗"],
    },
    {
        "question": "How do I buy a gift card?",
        "answer": "They are sold on the Gift cards page.",
        "variants": ["gift card"],
    },
    {"question": "How do I redeem a gift card?", "answer": "Enter the code at checkout.", "variants": ["gift card"]},
    {"question": "Is there a discount code?", "answer": XSS_ANSWER, "variants": ["promo code"]},
]
STREAM_CHUNKS = ["Yes! ", "Besides cash ", "we take Visa. ", "Mastercard works too. ", "And **PayPal**."]

# The widget's chat log as the customer sees it: one row per bubble.
BUBBLES_JS = """() => {
  const root = document.querySelector('[data-support-chat]').shadowRoot;
  return Array.from(root.querySelectorAll('.log > .msg:not(.greeting)')).map(item => ({
    kind: ['customer', 'bot', 'notice', 'error'].find(name => item.classList.contains(name)),
    text: (item.querySelector('.body, .text') || item).textContent,
    pending: item.classList.contains('pending'),
  }));
}"""


def in_thread(function):
    """Database work away from Playwright's event loop (Django refuses it in that thread)."""

    def call():
        try:
            return function()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


@pytest.fixture
def chromium():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (make test installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright

    # Started when first called: Playwright's sync API keeps an event loop running in this thread, where
    # Django refuses database calls; set the database up before (later database work: ``in_thread``).
    running = []

    def launch():
        if not running:
            playwright = sync_playwright().start()
            running.extend([playwright, playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)])
        return running[1]

    yield launch
    if running:
        running[1].close()
        running[0].stop()


@pytest.fixture
def stop_after(tmp_path):
    started = []
    yield started.append
    for thing in reversed(started):
        thing.stop()


def shop_with_site(allowed_origins):
    entries = {entry.question: entry for entry in entries_create() + entries_create(EXTRA_ENTRIES)}
    kb_embed_and_publish()
    site = Site.objects.create(
        name="Partner shop",
        allowed_origins=allowed_origins,
        starter_questions=["Where is my package?", "可以开发票吗？"],
        primary_colour="#b4441c",
    )
    return entries, site


def open_page(browser, url, **context_options):
    """A page in a fresh context (its own localStorage: a new customer); ``page.frames_in`` holds the
    frames the server sent it, ``page.console`` the browser console's lines."""
    context = browser.new_context(**{"viewport": {"width": 1280, "height": 800}, **context_options})
    page = context.new_page()
    page.frames_in, page.console = [], []
    page.on("console", lambda message: page.console.append(message.text))
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: page.frames_in.append(json.loads(payload))))
    page.goto(url)
    return page


def widget(page, selector):
    """A locator inside the widget's shadow root (Playwright's CSS engine pierces open shadow roots)."""
    return page.locator(f"[data-support-chat] {selector}")


def bubbles(page):
    return page.evaluate(BUBBLES_JS)


def wait_for_bubbles(page, count):
    page.wait_for_function(
        "n => document.querySelector('[data-support-chat]').shadowRoot"
        ".querySelectorAll('.log > .msg:not(.greeting):not(.rating)').length >= n",
        arg=count,
        timeout=WAIT_MS,
    )
    return bubbles(page)


def ask(page, text):
    widget(page, "textarea#sc-input").fill(text)
    widget(page, "textarea#sc-input").press("Enter")


def last_reply(page):
    return [frame for frame in page.frames_in if frame["type"] in ("answer", "suggestions")][-1]


def recorded(page, kind):
    return [event for event in page.evaluate("window.recorded") if event["type"] == kind]


def wait_for_frame(page, kind, timeout_ms=WAIT_MS):
    page.wait_for_function("() => true", timeout=100)  # let Playwright deliver queued events
    for _ in range(timeout_ms // 100):
        found = [frame for frame in page.frames_in if frame["type"] == kind]
        if found:
            return found[-1]
        page.wait_for_timeout(100)
    raise AssertionError(f"no {kind} frame; got {[frame['type'] for frame in page.frames_in]}")


def test_the_widget_on_a_customer_site(tmp_path, chromium, llm_server, stop_after, settings):
    """One server for the whole experience, to keep browser runs few: each part uses a fresh browser
    context (a new customer, a new conversation)."""
    # The XSS entry links to example.com: allowed, or screening would hold it unpublished.
    settings.CHATBOT_CONTACT_ALLOWLIST = ["https://example.com"]
    host, refused = HostSite(tmp_path / "host"), HostSite(tmp_path / "refused")
    stop_after(host)
    stop_after(refused)
    entries, site = shop_with_site([host.origin])
    payment, invoice = entries["Which payment methods do you accept?"], entries["可以开发票吗？"]
    redeem, discount = entries["How do I redeem a gift card?"], entries["Is there a discount code?"]

    def llm(body):
        if "cash" in json.dumps(body["messages"][-1]):
            return reply(chunks=[f"SOURCES: {payment.id}\n", *STREAM_CHUNKS], chunk_delay=0.3)
        return reply("NO_ANSWER")

    llm_server.default = llm
    server = web_server_start(tmp_path, redis_url=settings.TEST_REDIS_URL, llm_url=llm_server.base_url)
    stop_after(server)
    host.embed(app_url=server.url, key=site.key)
    refused.embed(app_url=server.url, key=site.key)

    chromium = chromium()
    page = open_page(chromium, host.url)
    launcher = widget(page, ".launcher")
    launcher.wait_for(timeout=WAIT_MS)
    assert recorded(page, "ready") == [{"type": "ready", "detail": {"language": "en"}}]
    # The host page's CSS (pink, dotted, 2rem padding on every button) does not reach inside.
    assert launcher.evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(180, 68, 28)"
    assert launcher.evaluate("b => getComputedStyle(b).padding") != "32px"
    assert launcher.get_attribute("aria-label") == "Open chat" and launcher.get_attribute("aria-expanded") == "false"

    # The host page opens it from its own Help button; focus moves into the panel.
    page.click("#help")
    widget(page, ".panel").wait_for(state="visible")
    assert page.evaluate("document.querySelector('[data-support-chat]').shadowRoot.activeElement.id") == "sc-input"
    assert widget(page, ".greeting").inner_text() == "Hi! How can we help you today?"
    assert widget(page, ".starters button").all_inner_texts() == ["Where is my package?", "可以开发票吗？"]

    # English, from a starter button: the FAQ answer, with feedback buttons.
    widget(page, ".starters button").first.click()
    shown = wait_for_bubbles(page, 2)
    track = entries["How do I track my order?"]
    assert shown == [
        {"kind": "customer", "text": "Where is my package?", "pending": False},
        {"kind": "bot", "text": track.answer, "pending": False},
    ]
    assert (last_reply(page)["source"], last_reply(page)["entry_id"]) == ("faq", track.id)
    assert widget(page, ".starters").count() == 0  # offered only before the first message
    assert widget(page, ".msg.bot .meta").last.inner_text() == "From our FAQ"
    assert widget(page, ".msg.bot").last.evaluate("m => getComputedStyle(m).letterSpacing") == "normal"
    assert "null" not in widget(page, ".msg.bot").last.inner_text()

    # Chinese: the Chinese entry's answer.
    ask(page, "我想开发票")
    shown = wait_for_bubbles(page, 4)
    assert shown[2:] == [
        {"kind": "customer", "text": "我想开发票", "pending": False},
        {"kind": "bot", "text": invoice.answer, "pending": False},
    ]
    assert last_reply(page)["entry_id"] == invoice.id

    # "Did you mean": buttons; the one clicked is answered and the buttons are spent.
    ask(page, "gift card")
    shown = wait_for_bubbles(page, 6)
    assert last_reply(page)["type"] == "suggestions"
    choices = widget(page, ".msg.bot").last.locator(".choices button")
    assert sorted(choices.all_inner_texts()) == ["How do I buy a gift card?", "How do I redeem a gift card?"]
    choices.filter(has_text="redeem").click()
    shown = wait_for_bubbles(page, 8)
    assert shown[6:] == [
        {"kind": "customer", "text": redeem.question, "pending": False},
        {"kind": "bot", "text": redeem.answer, "pending": False},
    ]
    assert last_reply(page)["entry_id"] == redeem.id
    assert all(button.is_disabled() for button in choices.all())

    # A streamed LLM answer: it grows in its bubble (typing indicator first), then the final text with
    # Markdown rendered and its citation as a labelled reference.
    page.evaluate("""() => {
        window.botStates = [];
        const root = document.querySelector('[data-support-chat]').shadowRoot;
        new MutationObserver(() => {
            const typing = !!root.querySelector('.log > .typing');
            const item = root.querySelector('.log > .msg.streaming');
            window.botStates.push({typing, streaming: item ? item.textContent : null});
        }).observe(root.querySelector('.log'), {childList: true, subtree: true, characterData: true});
    }""")
    ask(page, "Can I settle the bill with something other than cash?")
    widget(page, ".msg.streaming").wait_for(timeout=WAIT_MS)
    page.screenshot(path=str(tmp_path / "streaming.png"))
    shown = wait_for_bubbles(page, 10)
    page.wait_for_function(
        "() => !document.querySelector('[data-support-chat]').shadowRoot.querySelector('.msg.streaming')",
        timeout=WAIT_MS,
    )
    final = "Yes! Besides cash we take Visa. Mastercard works too. And PayPal."
    assert bubbles(page)[9] == {"kind": "bot", "text": final, "pending": False}
    answer = last_reply(page)
    assert (answer["source"], answer["citations"]) == ("llm", [payment.id])
    llm_bubble = widget(page, ".msg.bot").last
    assert llm_bubble.locator(".body strong").inner_text() == "PayPal"
    assert llm_bubble.locator(".refs").inner_text() == f"Sources: FAQ #{payment.id}"
    # The citation links to the entry's public page on the app (the site settings' faq_url).
    link = llm_bubble.locator(".refs a")
    assert link.get_attribute("href") == f"{server.url}faq/{payment.id}"
    assert link.get_attribute("rel") == "noopener noreferrer"
    states = page.evaluate("window.botStates")
    assert any(state["typing"] for state in states)  # the typing indicator came first
    streamed = [state["streaming"].replace("Assistant: ", "") for state in states if state["streaming"]]
    assert len(set(streamed)) >= 2 and all(final.startswith(text) for text in streamed)
    deltas = [frame["text"] for frame in page.frames_in if frame["type"] == "delta"]
    assert len(deltas) >= 3

    # Thumbs down with a reason on the LLM answer: stored.
    llm_bubble.get_by_role("button", name="Not helpful").click()
    widget(page, ".reason textarea").fill("It did not mention Apple Pay")
    widget(page, ".reason button").click()
    saved = wait_for_frame(page, "feedback_saved")
    assert saved == {"type": "feedback_saved", "message_id": answer["message_id"], "value": "down"}
    stored = in_thread(lambda: Message.objects.get(pk=answer["message_id"]).feedback)
    assert (stored.value, stored.reason) == ("down", "It did not mention Apple Pay")
    assert llm_bubble.get_by_role("button", name="Not helpful").get_attribute("aria-pressed") == "true"
    llm_bubble.locator(".thanks").wait_for()

    # XSS in a KB answer and in the customer's message: shown as text, never run or parsed as HTML.
    ask(page, "Is there a discount code?")
    ask(page, XSS_MESSAGE)
    shown = wait_for_bubbles(page, 14)
    assert last_reply(page)["source"] in ("faq", "llm", "handoff")
    discount_id = [f for f in page.frames_in if f.get("entry_id") == discount.id][-1]["message_id"]
    discount_bubble = widget(page, f'.msg.bot[data-message-id="{discount_id}"]')
    assert "<img src=x onerror=" in discount_bubble.locator(".body").inner_text()
    assert "<script>window.pwned=2</script>" in discount_bubble.locator(".body").inner_text()
    assert discount_bubble.locator(".body strong").inner_text() == "SAVE10"
    links = discount_bubble.locator(".body a")
    assert [links.nth(i).get_attribute("href") for i in range(links.count())] == ["https://example.com/help"]
    assert links.first.get_attribute("rel") == "noopener noreferrer nofollow"
    assert {"kind": "customer", "text": XSS_MESSAGE, "pending": False} in shown
    assert (
        page.evaluate("document.querySelector('[data-support-chat]').shadowRoot.querySelectorAll('img, script').length")
        == 0
    )
    assert page.evaluate("window.pwned") is None

    # The host-page API and its events.
    before = len(page.evaluate("window.recorded"))
    page.evaluate("SupportChat.send('How do I reset my password?')")
    wait_for_bubbles(page, 16)
    events = page.evaluate("window.recorded")[before:]
    assert [(e["type"], e["detail"]["role"], e["detail"]["text"]) for e in events if e["type"] == "message"] == [
        ("message", "customer", "How do I reset my password?"),
        ("message", "bot", entries["How do I reset my password?"].answer),
    ]
    page.evaluate("SupportChat.identify({name: 'Ada Lovelace', email: 'ada@example.com'})")
    wait_for_frame(page, "identified")
    conversation_id = page.evaluate("JSON.parse(localStorage.getItem(Object.keys(localStorage)[0])).conversation")
    person = in_thread(
        lambda: Conversation.objects.values("customer_name", "customer_email", "site_id").get(id=conversation_id)
    )
    assert person == {"customer_name": "Ada Lovelace", "customer_email": "ada@example.com", "site_id": site.id}

    # The hand-off offer is a button; taking it fires "handoff" (the chat waits for a person:
    # tests/integration/test_agent_browser.py goes on from there); the chat can be rated at its end.
    ask(page, "Do you sell garden furniture?")
    offer = widget(page, ".msg.bot").last.get_by_role("button", name="Talk to a person")
    offer.wait_for(timeout=WAIT_MS)
    assert (last_reply(page)["source"], last_reply(page)["handoff"]) == ("handoff", "offered")
    # The offer can be rated too: a thumbs-down there shows editors what the FAQ lacks.
    assert widget(page, ".msg.bot").last.locator(".feedback button").count() == 2
    offer.click()
    widget(page, ".waiting-person").wait_for(timeout=WAIT_MS)  # a person is on the way
    assert len(recorded(page, "handoff")) == 1
    assert (last_reply(page)["source"], last_reply(page)["handoff"]) == ("handoff", "requested")
    assert widget(page, ".rating").count() == 0  # no rating while the customer waits for a person
    widget(page, ".head button").first.click()  # End chat
    widget(page, ".rating").wait_for(timeout=WAIT_MS)
    page.screenshot(path=str(tmp_path / "rating.png"))
    widget(page, '.rating input[value="4"]').check()
    widget(page, ".rating textarea").fill("Quick answers")
    widget(page, ".rating button[type=submit]").click()

    def rated():
        return Conversation.objects.values_list("rating", "rating_comment").get(id=conversation_id)

    deadline = time.monotonic() + WAIT_MS / 1000
    while in_thread(rated) != (4, "Quick answers") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert in_thread(rated) == (4, "Quick answers")

    # Keyboard: Escape closes and gives focus back; the events say so.
    widget(page, "textarea#sc-input").press("Escape")
    assert widget(page, ".panel").is_hidden()
    assert page.evaluate("document.activeElement.id") == "help"
    launcher.press("Enter")
    widget(page, ".panel").wait_for(state="visible")
    assert [e["type"] for e in page.evaluate("window.recorded") if e["type"] in ("open", "close")] == [
        "open",
        "close",
        "open",
    ]

    # Chinese UI strings on request.
    assert page.evaluate("SupportChat.setLanguage('zh')") == "zh-Hans"
    assert widget(page, "textarea#sc-input").get_attribute("placeholder") == "请输入您的问题…"
    assert widget(page, ".composer button").inner_text() == "发送"
    page.evaluate("SupportChat.setLanguage('en')")

    # axe-core: no violations on the host page with the widget open; no CSP violation at any point.
    results = axe_run(page)
    assert results.violations_count == 0, axe_summary(results)
    assert not [line for line in page.console if "Content Security Policy" in line or "Refused to" in line]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "widget-desktop.png"))

    # Phone width and reduced motion: a full-screen panel without animation.
    phone = open_page(
        chromium,
        host.url,
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        reduced_motion="reduce",
        locale="zh-CN",
    )
    widget(phone, ".launcher").click()
    widget(phone, ".panel").wait_for(state="visible")
    box = widget(phone, ".panel").bounding_box()
    assert (box["x"], box["y"], box["width"], box["height"]) == (0, 0, 390, 844)
    assert widget(phone, ".panel").evaluate("p => getComputedStyle(p).animationName") == "none"
    ask(phone, "可以开发票吗")
    wait_for_bubbles(phone, 2)
    results = axe_run(phone)
    assert results.violations_count == 0, axe_summary(results)
    phone.screenshot(path=str(SCREENSHOTS / "widget-phone.png"))

    # A page on an origin the site does not list: no widget, and the socket is refused.
    other = open_page(chromium, refused.url)
    other.wait_for_function("() => window.recorded.some(e => e.type === 'unavailable')", timeout=WAIT_MS)
    assert other.locator("[data-support-chat]").count() == 0
    outcome = other.evaluate(
        """url => new Promise(done => {
            const ws = new WebSocket(url);
            ws.onopen = () => done('open');
            ws.onclose = event => done('closed ' + event.code);
        })""",
        server.ws_url + "?site=" + site.key,
    )
    assert outcome == "closed 1006"
    assert in_thread(lambda: Conversation.objects.filter(site=site).count()) == 2  # desktop and phone


def test_a_dropped_connection_and_a_reload_lose_and_double_nothing(tmp_path, chromium, stop_after):
    host = HostSite(tmp_path / "host")
    stop_after(host)
    entries, site = shop_with_site([host.origin])
    server = web_server_start(tmp_path, redis_url=settings.TEST_REDIS_URL)
    stop_after(server)
    proxy = TcpProxy(int(server.url.rsplit(":", 1)[1].strip("/")))
    stop_after(proxy)
    host.embed(app_url=proxy.url, key=site.key)
    answer = {question: entry.answer for question, entry in entries.items()}

    chromium = chromium()
    page = open_page(chromium, host.url)
    widget(page, ".launcher").click()
    ask(page, "I forgot my password")
    wait_for_bubbles(page, 2)

    # The network goes: a message typed meanwhile waits, marked, and is sent once it is back.
    proxy.cut()
    page.wait_for_function("() => ['reconnecting', 'offline'].includes(SupportChat.status)", timeout=WAIT_MS)
    ask(page, "Where is my package?")
    assert bubbles(page)[2] == {"kind": "customer", "text": "Where is my package?", "pending": True}
    assert widget(page, ".msg.pending .queued").inner_text() == "waiting to send"
    page.wait_for_timeout(1500)
    proxy.restore()
    shown = wait_for_bubbles(page, 4)
    assert shown[2:] == [
        {"kind": "customer", "text": "Where is my package?", "pending": False},
        {"kind": "bot", "text": answer["How do I track my order?"], "pending": False},
    ]
    assert any(frame["type"] == "session" and frame["resumed"] for frame in page.frames_in)

    # Dropped right after sending: the message is resent with its id; the server answers it once.
    page.evaluate("SupportChat.send('Can I send something back?')")
    proxy.cut()
    page.wait_for_timeout(1000)
    proxy.restore()
    shown = wait_for_bubbles(page, 6)
    page.wait_for_function("() => SupportChat.status === 'online'", timeout=WAIT_MS)
    page.wait_for_timeout(1000)  # a doubled reply would have arrived by now
    expected = [
        {"kind": "customer", "text": "I forgot my password", "pending": False},
        {"kind": "bot", "text": answer["How do I reset my password?"], "pending": False},
        {"kind": "customer", "text": "Where is my package?", "pending": False},
        {"kind": "bot", "text": answer["How do I track my order?"], "pending": False},
        {"kind": "customer", "text": "Can I send something back?", "pending": False},
        {"kind": "bot", "text": answer["What is your return policy?"], "pending": False},
    ]
    assert bubbles(page) == expected
    conversation_id = page.evaluate("JSON.parse(localStorage.getItem(Object.keys(localStorage)[0])).conversation")
    stored = in_thread(
        lambda: list(Message.objects.filter(conversation_id=conversation_id).values_list("role", "text"))
    )
    assert [text for _role, text in stored] == [row["text"] for row in expected]

    # A reload: the panel opens again with the history, each message once.
    page.frames_in.clear()
    page.reload()
    wait_for_bubbles(page, 6)
    page.wait_for_function("() => SupportChat.status === 'online'", timeout=WAIT_MS)
    assert bubbles(page) == expected
    assert [frame["type"] for frame in page.frames_in] == ["session", "history"]


def test_the_demo_page_is_a_host_page_of_the_widget(tmp_path, chromium, stop_after):
    entries, _site = shop_with_site([])
    server = web_server_start(tmp_path, redis_url=settings.TEST_REDIS_URL)
    stop_after(server)
    chromium = chromium()
    page = open_page(chromium, server.url)
    # The page carries the embed tag, nothing else of the chat.
    tag = page.locator("script[src='/widget.js']")
    assert (tag.get_attribute("data-site"), tag.get_attribute("async")) == ("default", "")
    assert page.locator("script:not([src])").count() == 0
    widget(page, ".launcher").wait_for(timeout=WAIT_MS)
    page.get_by_role("button", name="I forgot my password").click()
    shown = wait_for_bubbles(page, 2)
    assert shown == [
        {"kind": "customer", "text": "I forgot my password", "pending": False},
        {"kind": "bot", "text": entries["How do I reset my password?"].answer, "pending": False},
    ]
    results = axe_run(page)
    assert results.violations_count == 0, axe_summary(results)

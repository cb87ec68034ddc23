"""The demo page in headless Chromium against the real ASGI server (uvicorn, on the test database): what a
customer sees for an FAQ answer, the hand-off offer and request, a reload, "did you mean" buttons, and an
LLM answer streaming into its bubble."""

import json
import os
import socket
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings
from django.db import connections

from chatbot.models import Conversation
from chatbot.protocol import PROTOCOL_VERSION
from config.runstack import web_command
from kb import services
from tests.factories import entries_create, kb_embed_and_publish
from tests.integration.servers import web_server_env
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

# Every bubble of the chat log as the customer sees it: its text (without the meta line), the meta line and
# its buttons.
BUBBLES_JS = """() => Array.from(document.querySelectorAll('#log .msg')).map(item => ({
    classes: Array.from(item.classList).filter(name => name !== 'msg').sort(),
    text: Array.from(item.childNodes).filter(node => node.nodeType === Node.TEXT_NODE)
        .map(node => node.textContent).join(''),
    meta: item.querySelector('.meta') ? item.querySelector('.meta').textContent : null,
    buttons: Array.from(item.querySelectorAll('.choices button'))
        .map(button => ({label: button.textContent, disabled: button.disabled})),
}))"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def shop(transactional_db):
    """The shop's FAQ entries, by question (published when the server starts)."""
    return {entry.question: entry for entry in entries_create()}


@pytest.fixture
def start_web(transactional_db, tmp_path):
    """Start the ASGI server with `make run`'s command on the test database and publish the knowledge base
    while it loads its models (it checks for a new index version on every search). Without ``llm_url`` the
    server has no LLM; with it, the server's LLM is that URL (set through its environment)."""
    started = []

    def start(llm_url: str | None = None) -> str:
        port = free_port()
        # The Redis channel layer, as deployed (the in-memory one would hide connection trouble).
        env = web_server_env(redis_url=settings.TEST_REDIS_URL, llm_url=llm_url)
        log_path = tmp_path / f"web-{port}.log"
        log = log_path.open("w")
        process = subprocess.Popen(
            web_command("127.0.0.1", port), env=env, cwd=settings.BASE_DIR, stdout=log, stderr=subprocess.STDOUT
        )
        started.append((process, log))
        kb_embed_and_publish()
        url = f"http://localhost:{port}/"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "healthz", timeout=2).close()
                return url
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    process.kill()
                    raise AssertionError(log_path.read_text()[-3000:]) from None
                time.sleep(0.3)

    yield start
    for process, log in started:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def browser(transactional_db):
    """Starts headless Chromium when first called. Playwright's sync API keeps an event loop running in this
    thread, where Django refuses database calls: set the database up before, or use ``in_thread``."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (make test installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright

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


def in_thread(function):
    """Call ``function`` (database work) in a thread of its own, away from Playwright's event loop."""

    def call():
        try:
            return function()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


def open_chat(browser, url):
    """A page on the demo, connected; ``page.frames_in`` collects the frames the server sends it."""
    page = browser().new_page(viewport={"width": 1100, "height": 760})
    page.frames_in = []

    def on_websocket(ws):
        ws.on("framereceived", lambda payload: page.frames_in.append(json.loads(payload)))

    page.on("websocket", on_websocket)
    page.goto(url)
    page.wait_for_selector("#status.ok", timeout=WAIT_MS)
    return page


def ask(page, text):
    page.fill("#text", text)
    page.press("#text", "Enter")


def bubbles(page):
    return page.evaluate(BUBBLES_JS)


def wait_for_bubbles(page, count):
    page.wait_for_function(f"document.querySelectorAll('#log .msg').length === {count}", timeout=WAIT_MS)
    return bubbles(page)


def replies(page):
    """The answer and suggestions frames the page received, in order."""
    return [frame for frame in page.frames_in if frame["type"] in ("answer", "suggestions")]


def customer(text):
    return {"classes": ["customer"], "text": text, "meta": None, "buttons": []}


def bot(text, meta=None, buttons=()):
    return {"classes": ["bot"], "text": text, "meta": meta, "buttons": list(buttons)}


def test_faq_answer_hand_off_offer_and_request_then_a_reload_resumes(shop, start_web, browser, tmp_path):
    password = shop["How do I reset my password?"]
    page = open_chat(browser, start_web())

    ask(page, "I can't remember my password")
    shown = wait_for_bubbles(page, 2)
    assert shown[0] == customer("I can't remember my password")
    assert shown[1]["text"] == password.answer and shown[1]["meta"].startswith("from the FAQ · score ")
    assert (replies(page)[-1]["source"], replies(page)[-1]["entry_id"]) == ("faq", password.id)

    # Without an LLM, a question the FAQ does not cover gets the offer of a person, with a button for it.
    page.click("text=Do you sell garden furniture?")
    shown = wait_for_bubbles(page, 4)
    offer = replies(page)[-1]
    assert (offer["source"], offer["handoff"]) == ("handoff", "offered")
    assert shown[2] == customer("Do you sell garden furniture?")
    assert "talk to a person" in shown[3]["text"] and shown[3]["text"] == offer["text"]
    assert shown[3]["buttons"] == [{"label": "Talk to a person", "disabled": False}]
    button = page.locator(".msg.bot").nth(1).get_by_role("button", name="Talk to a person")
    assert button.is_visible()

    button.click()
    shown = wait_for_bubbles(page, 6)
    requested = replies(page)[-1]
    assert (requested["source"], requested["handoff"]) == ("handoff", "requested")
    assert shown[3]["buttons"] == [{"label": "Talk to a person", "disabled": True}]
    assert shown[4] == customer("I'd like to talk to a person")
    assert "member of our team to join" in shown[5]["text"] and shown[5]["text"] == requested["text"]
    conversation_id = page.evaluate("localStorage.getItem('chatbot.conversation')")
    assert in_thread(lambda: Conversation.objects.get(id=conversation_id).state) == "waiting"

    # A reload resumes the same conversation and shows its history once.
    page.frames_in.clear()
    page.reload()
    page.wait_for_selector("#status.ok", timeout=WAIT_MS)
    history = wait_for_bubbles(page, 6)
    assert [frame["type"] for frame in page.frames_in] == ["session", "history"]
    token = page.evaluate("localStorage.getItem('chatbot.resume_token')")
    assert page.frames_in[0] == {
        "type": "session",
        "conversation": conversation_id,
        "resumed": True,
        "resume_token": token,
        "protocol": PROTOCOL_VERSION,
    }
    assert history == [
        customer("I can't remember my password"),
        bot(password.answer, "from the FAQ"),
        customer("Do you sell garden furniture?"),
        bot(offer["text"]),
        customer("I'd like to talk to a person"),
        bot(requested["text"]),
    ]
    page.screenshot(path=str(tmp_path / "faq-and-handoff.png"))


def test_did_you_mean_buttons_answer_the_chosen_entry(shop, start_web, browser, tmp_path):
    buy = services.entry_create(
        question="How do I buy a gift card?", answer="They are sold on the Gift cards page.", variants=["gift card"]
    )
    redeem = services.entry_create(
        question="How do I redeem a gift card?", answer="Enter the code at checkout.", variants=["gift card"]
    )
    page = open_chat(browser, start_web())

    ask(page, "gift card")
    shown = wait_for_bubbles(page, 2)
    assert replies(page)[-1]["type"] == "suggestions"
    assert shown[0] == customer("gift card")
    assert shown[1]["text"] == "Did you mean one of these?"
    labels = sorted(button["label"] for button in shown[1]["buttons"])
    assert labels == sorted([buy.question, redeem.question])
    assert not any(button["disabled"] for button in shown[1]["buttons"])
    for label in labels:
        assert page.get_by_role("button", name=label, exact=True).is_visible()

    page.get_by_role("button", name=redeem.question, exact=True).click()
    shown = wait_for_bubbles(page, 4)
    answer = replies(page)[-1]
    assert (answer["type"], answer["source"], answer["entry_id"]) == ("answer", "faq", redeem.id)
    assert all(button["disabled"] for button in shown[1]["buttons"])
    assert shown[2] == customer(redeem.question)
    assert shown[3] == bot(redeem.answer, "from the FAQ")
    page.screenshot(path=str(tmp_path / "did-you-mean.png"))


def test_an_llm_answer_streams_into_its_bubble(shop, start_web, browser, llm_server, tmp_path):
    payment = shop["Which payment methods do you accept?"]
    chunks = ["Yes! Besides ", "cash we ", "take Visa, ", "Mastercard, ", "PayPal and ", "gift cards ", "at checkout."]
    final_text = "".join(chunks)
    llm_server.default = lambda body: reply(chunks=[*chunks, f"\nSOURCES: {payment.id}"], chunk_delay=0.3)
    page = open_chat(browser, start_web(llm_url=llm_server.base_url))
    # Record every state of the bot bubbles as the page changes them.
    page.evaluate(
        """() => {
        window.botStates = [];
        new MutationObserver(() => document.querySelectorAll('#log .msg.bot').forEach(item => {
            window.botStates.push({streaming: item.classList.contains('streaming'), text: item.textContent});
        })).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});
    }"""
    )

    ask(page, "Can I settle the bill with something other than cash?")
    partial = page.wait_for_function(
        """() => {
            const item = document.querySelector('#log .msg.bot');
            if (!item || !item.textContent) return null;
            item.seenStreaming = item.classList.contains('streaming');
            return {classes: item.className, text: item.textContent};
        }""",
        timeout=WAIT_MS,
    ).json_value()
    page.screenshot(path=str(tmp_path / "llm-streaming.png"))
    assert partial["classes"] == "msg bot streaming"
    assert final_text.startswith(partial["text"]) and len(partial["text"]) < len(final_text)

    page.wait_for_selector("#log .msg.bot .meta", timeout=WAIT_MS)
    # The final answer replaced the provisional bubble instead of adding one.
    assert bubbles(page) == [
        customer("Can I settle the bill with something other than cash?"),
        bot(final_text, f"AI answer from our FAQ · sources #{payment.id}"),
    ]
    assert page.evaluate("document.querySelector('#log .msg.bot').seenStreaming") is True
    answer = replies(page)[-1]
    assert (answer["source"], answer["text"], answer["citations"]) == ("llm", final_text, [payment.id])

    states = page.evaluate("window.botStates")
    streamed = [state["text"] for state in states if state["streaming"]]
    assert all(final_text.startswith(text) for text in streamed)
    assert len({text for text in streamed if text and text != final_text}) >= 2  # it grew in steps
    assert not any("SOURCES" in state["text"] for state in states)
    deltas = [frame["text"] for frame in page.frames_in if frame["type"] == "delta"]
    assert len(deltas) >= 3 and "".join(deltas) == final_text
    assert len(llm_server.completion_requests) == 1 and llm_server.completion_requests[0].body["stream"] is True
    page.screenshot(path=str(tmp_path / "llm-answer.png"))

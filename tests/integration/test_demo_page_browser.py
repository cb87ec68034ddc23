"""The demo page in headless Chromium: type a question, see the FAQ answer; reload, see history."""

import os
import socket
import subprocess
import time
import urllib.request

import pytest
from django.conf import settings

from chatbot.management.commands.runstack import web_command
from tests.factories import entries_create, kb_embed_and_publish
from tests.integration.workers import database_url

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live_web(transactional_db, tmp_path):
    """The ASGI server started with `make run`'s command, on the test database."""
    entries = entries_create()
    kb_embed_and_publish()
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(),
        "KB_INDEX_DIR": str(settings.KB_INDEX_DIR),
        "CHATBOT_WARM_UP": "1",
    }
    log = (tmp_path / "web.log").open("w")
    process = subprocess.Popen(
        web_command("127.0.0.1", port), env=env, cwd=settings.BASE_DIR, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://localhost:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + "healthz", timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise AssertionError((tmp_path / "web.log").read_text()[-3000:]) from None
            time.sleep(0.3)
    yield url, entries
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (make test installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_customer_types_a_question_and_gets_the_faq_answer(live_web, browser, tmp_path):
    url, entries = live_web
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#status.ok", timeout=20_000)
    page.fill("#text", "I can't remember my password")
    page.press("#text", "Enter")
    bot = page.locator(".msg.bot").first
    bot.wait_for(timeout=20_000)
    assert bot.inner_text().startswith(entries[3].answer)
    assert "from the FAQ" in bot.inner_text()
    page.screenshot(path=str(tmp_path / "demo.png"))

    page.click("text=Do you sell garden furniture?")
    page.wait_for_function("document.querySelectorAll('.msg.bot').length === 2", timeout=20_000)
    assert "Sorry" in page.locator(".msg.bot").nth(1).inner_text()

    # A reload resumes the same conversation and shows its history once.
    page.reload()
    page.wait_for_selector("#status.ok", timeout=20_000)
    page.wait_for_function("document.querySelectorAll('.msg').length === 4", timeout=20_000)
    texts = page.locator(".msg").all_inner_texts()
    assert texts[0] == "I can't remember my password" and texts[2] == "Do you sell garden furniture?"

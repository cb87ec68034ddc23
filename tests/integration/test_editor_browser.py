"""A KB editor's loop in headless Chromium against the real ASGI server (issue 14): add a phrasing
on the entry page -> the chat widget answers it; revert to the earlier version -> the chat answers
as before; import a file as unpublished -> customers get nothing from it until it is published.
Embedding and publishing run in-process (the worker's own path is tests/integration/
test_worker_pipeline.py); the web process finds each new index version by itself. Also saves the
README's screenshots of the entry page, the import preview and hit testing."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from kb.models import Entry, IndexVersion
from tests.factories import kb_embed_and_publish
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

# Words no entry of the shop's knowledge base is near: answered only once they are a phrasing.
NEW_PHRASING = "marmalade courier lighthouse"
DRONE_ANSWER = "Yes: drone delivery is available in Austin on orders under 2 kg."


def publish_and_wait(server) -> int:
    """Embed what is dirty, publish an index version and wait until the web process has loaded it."""
    version = in_thread(lambda: kb_embed_and_publish().pk)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{server.url}healthz", timeout=5) as response:
            if json.loads(response.read()).get("index_loaded") == version:
                return version
        time.sleep(0.2)
    raise AssertionError(f"the web process did not load index v{version}")


def reply_to(browser, server, question: str) -> str:
    """The bot's reply to ``question`` asked by a new customer in the demo page's widget."""
    page = open_page(browser, server.url)
    try:
        widget(page, ".launcher").click()
        ask(page, question)
        page.wait_for_function(
            "() => { const root = document.querySelector('[data-support-chat]').shadowRoot;"
            " const bot = root.querySelectorAll('.log > .msg.bot:not(.greeting)');"
            " return bot.length && !bot[bot.length - 1].classList.contains('pending'); }",
            timeout=WAIT_MS,
        )
        return widget(page, ".log > .msg.bot:not(.greeting) .body").last.inner_text()
    finally:
        page.context.close()


def admin_login(browser, server):
    page = open_page(browser, f"{server.url}admin/login/")
    page.fill("#id_username", "editor")
    page.fill("#id_password", "pw-editor-123")
    page.click("input[type=submit]")
    page.wait_for_url(f"{server.url}admin/")
    return page


def test_an_edit_reaches_the_chat_and_a_revert_takes_it_back(tmp_path, chromium, stop_after):  # noqa: F811
    entries, _site = shop_with_site([])
    get_user_model().objects.create_superuser("editor", "editor@example.com", "pw-editor-123")
    track = entries["How do I track my order?"]
    phrasings_before = sorted(track.variants.values_list("text", flat=True))
    server = web_server_start(tmp_path, redis_url=settings.TEST_REDIS_URL)
    stop_after(server)
    browser = chromium()
    assert reply_to(browser, server, NEW_PHRASING) != track.answer

    # The editor adds a phrasing in the first empty row and saves: the page shows it saved.
    admin = admin_login(browser, server)
    admin.goto(f"{server.url}admin/kb/entry/{track.id}/change/")
    row = len(phrasings_before)
    admin.fill(f"[name='variants-{row}-text']", NEW_PHRASING)
    admin.click("input[name='_continue']")
    assert "was changed successfully" in admin.locator("ul.messagelist").inner_text()
    assert admin.locator(f"[name='variants-{row}-text']").input_value() == NEW_PHRASING
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    admin.screenshot(path=str(SCREENSHOTS / "editor-entry.png"), full_page=True)
    publish_and_wait(server)
    assert reply_to(browser, server, NEW_PHRASING) == track.answer

    # The history shows the phrasing added; reverting to the first version takes it out again.
    admin.goto(f"{server.url}admin/kb/entry/{track.id}/history/")
    assert f"+ {NEW_PHRASING}" in admin.locator("#change-history").inner_text()
    admin.locator("#change-history tbody tr").last.locator("a").first.click()
    assert f"removes 1 added since ({NEW_PHRASING})" in admin.locator("#version-phrasings").inner_text()
    admin.click("input[value=Revert]")
    assert "was changed successfully" in admin.locator("ul.messagelist").inner_text()
    assert in_thread(lambda: sorted(Entry.objects.get(pk=track.pk).variants.values_list("text", flat=True))) == (
        phrasings_before
    )
    publish_and_wait(server)
    assert reply_to(browser, server, NEW_PHRASING) != track.answer
    assert reply_to(browser, server, "Where is my package?") == track.answer


def test_an_import_as_unpublished_reaches_customers_only_once_published(tmp_path, chromium, stop_after):  # noqa: F811
    shop_with_site([])
    get_user_model().objects.create_superuser("editor", "editor@example.com", "pw-editor-123")
    server = web_server_start(tmp_path, redis_url=settings.TEST_REDIS_URL)
    stop_after(server)
    browser = chromium()
    faq = tmp_path / "new-faq.csv"
    faq.write_text(
        "question,answer,category,variants\n"
        f'Do you deliver by drone?,"{DRONE_ANSWER}",Shipping,drone delivery|can a drone bring my order\n'
        "Do you gift wrap?,TODO,Shipping,\n"
    )

    admin = admin_login(browser, server)
    admin.goto(f"{server.url}admin/kb/entry/import/")
    admin.set_input_files("input[type=file]", str(faq))
    admin.click("input[value=Preview]")
    preview = admin.locator("#import-preview").inner_text()
    assert DRONE_ANSWER in preview and "placeholder answer (TODO)" in preview
    admin.screenshot(path=str(SCREENSHOTS / "editor-import-preview.png"), full_page=True)
    # A placeholder in the file: "Import as unpublished" is the default button.
    assert admin.locator("button.default").inner_text() == "Import as unpublished"
    admin.click("button.default")
    admin.locator("#import-progress").wait_for(timeout=WAIT_MS)
    assert "0 of 2" in admin.locator("#import-progress").inner_text()

    publish_and_wait(server)
    admin.reload()
    admin.locator("#import-searchable").wait_for(timeout=WAIT_MS)
    assert "2 of 2" in admin.locator("#import-progress").inner_text()
    assert reply_to(browser, server, "Do you deliver by drone?") != DRONE_ANSWER

    # Published from the changelist: now customers get it.
    drone = in_thread(lambda: Entry.objects.get(question="Do you deliver by drone?").pk)
    admin.goto(f"{server.url}admin/kb/entry/?is_published__exact=0")
    admin.check(f"input.action-select[value='{drone}']")
    admin.select_option("select[name=action]", "publish")
    admin.click("button[name=index]")
    assert "Published 1 entries." in admin.locator("ul.messagelist").inner_text()
    version = publish_and_wait(server)
    published = in_thread(lambda: Entry.objects.filter(is_published=True).count())
    assert in_thread(lambda: IndexVersion.objects.get(pk=version).entry_count) == published
    assert reply_to(browser, server, "Do you deliver by drone?") == DRONE_ANSWER


def test_hit_testing_screenshot(tmp_path, chromium, stop_after):  # noqa: F811
    """Hit testing as an editor uses it (its behaviour: tests/chatbot/test_hit_testing.py)."""
    shop_with_site([])
    get_user_model().objects.create_superuser("editor", "editor@example.com", "pw-editor-123")
    server = web_server_start(tmp_path, redis_url=settings.TEST_REDIS_URL)
    stop_after(server)
    admin = admin_login(chromium(), server)
    admin.goto(f"{server.url}admin/kb/entry/hit-testing/")
    admin.fill("textarea[name=questions]", "where's my parcel\nI forgot my password\ndo you sell garden furniture")
    admin.click("input[value='Test questions']")
    assert "How do I track my order?" in admin.locator("#hit-results").inner_text()
    admin.screenshot(path=str(SCREENSHOTS / "editor-hit-testing.png"), full_page=True)

"""The ops console in headless Chromium against the real ASGI server (issue 15): a customer chats in
the widget, then an ops reviewer finds the conversation in /ops/ by its outcome and reads its
trace, then the dashboard. Saves the README's screenshots of a transcript and the dashboard."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from tests.integration.servers import web_server_start
from tests.integration.test_editor_browser import reply_to
from tests.integration.test_widget_browser import (
    SCREENSHOTS,
    chromium,  # noqa: F401 - the fixture
    open_page,
    shop_with_site,
    stop_after,  # noqa: F401 - the fixture
)

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def test_an_ops_reviewer_reads_what_the_bot_did(tmp_path, chromium, stop_after):  # noqa: F811
    entries, _site = shop_with_site([])
    reviewer = get_user_model().objects.create_user("ops", "ops@example.com", "pw-ops-12345", is_staff=True)
    # The permission the Ops reviewers group holds (a transactional test's flush drops the groups
    # the migrations made; tests/ops checks the groups themselves).
    reviewer.user_permissions.add(Permission.objects.get(codename="view_conversation"))
    server = web_server_start(tmp_path, redis_url=settings.TEST_REDIS_URL)
    stop_after(server)
    browser = chromium()
    track = entries["How do I track my order?"]
    assert reply_to(browser, server, "where is my parcel?") == track.answer
    assert reply_to(browser, server, "do you sell garden furniture") != track.answer

    page = open_page(browser, f"{server.url}admin/login/?next=/ops/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "pw-ops-12345")
    page.click("input[type=submit]")
    page.wait_for_url(f"{server.url}ops/")
    assert page.locator("#transcript-count").inner_text().startswith("2 conversations.")
    page.select_option("select[name=outcome]", "faq")
    page.click("#transcript-filters button[type=submit]")
    assert page.locator("#transcript-count").inner_text().startswith("1 conversation.")
    page.locator("#transcripts tbody a").first.click()
    trace = page.locator("details.trace").first
    trace.locator("summary").click()  # FAQ answers' traces start folded
    first_hit = trace.locator("tr.trace-hit").first.inner_text()
    assert f"#{track.id} How do I track my order?" in first_hit and "answered" in first_hit
    assert "≥ answer" in first_hit
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "ops-transcript.png"), full_page=True)

    # The dashboard: its charts are drawn (Chart.js from the static files) from these two chats.
    page.goto(f"{server.url}ops/metrics/")
    page.wait_for_function("() => window.Chart && Chart.getChart('chart-per-day')")
    assert page.locator("#m-conversations").inner_text() == "2"
    assert page.evaluate("Chart.getChart('chart-answered-by').data.datasets[0].data") == [1, 0, 0]
    page.screenshot(path=str(SCREENSHOTS / "ops-metrics.png"), full_page=True)

"""The metrics dashboard (issue 15): conversations per day by outcome, who answered, the
resolution rate as the README defines it, thumbs, CSAT, first response times, top entries."""

from datetime import timedelta

import pytest
from django.utils import timezone

from chatbot.models import Conversation
from ops.metrics import dashboard, percentile
from tests.ops.test_transcripts import exchange, shop, user  # noqa: F401 - shop is a fixture

pytestmark = pytest.mark.django_db


def test_the_figures_follow_their_definitions(shop):  # noqa: F811
    made, entries, _partner = shop
    repeated = Conversation.objects.create()
    exchange(repeated, "Where is my parcel?", source="faq", entry=entries[0])
    exchange(repeated, "where is my parcel?", source="faq", entry=entries[0])  # asked again: not resolved
    today = timezone.localdate()
    figures = dashboard(today - timedelta(days=13), today)

    assert figures.conversations == 6 and len(figures.days) == 14
    assert [figures.per_day[label][-1] for label in ("FAQ", "LLM", "unanswered", "handed off")] == [2, 1, 1, 1]
    assert figures.per_day["no reply"][-11] == 1  # ten days ago
    assert figures.answered_by == {"FAQ": 3, "LLM": 1, "a person": 0}
    # Replied in 5; resolved: the FAQ one and the LLM one (no hand-off, thumbs-down or repeat).
    assert (figures.resolved, figures.replied) == (2, 5) and figures.resolution_rate == 0.4
    assert (figures.thumbs_up, figures.thumbs_down) == (1, 1)
    assert (figures.ratings, figures.csat, figures.mean_rating) == (1, 1.0, 5.0)
    assert figures.bot_first_response_ms == {"p50": 240.0, "p95": 240.0}
    assert figures.top_hits == [(entries[0].id, entries[0].question, 3)]
    # Only today: the old conversation is out of range.
    assert dashboard(today, today).conversations == 5


def test_percentiles_are_nearest_rank():
    assert percentile([], 0.5) is None
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile(list(map(float, range(1, 101))), 0.95) == 95.0


def test_the_page_draws_its_charts_from_vendored_static_files(client, shop):  # noqa: F811
    client.force_login(user("ops", group="Ops reviewers"))
    page = client.get("/ops/metrics/").content.decode()
    assert 'id="chart-per-day"' in page and 'id="metrics-data"' in page
    assert "/static/ops/vendor/chart-4.5.1.umd.min.js" in page and "cdn" not in page.lower()
    assert 'id="m-resolution">50%' in page  # 2 of the 4 with a reply
    client.force_login(user("staff"))
    assert client.get("/ops/metrics/").status_code == 403

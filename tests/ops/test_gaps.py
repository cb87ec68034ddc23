"""Gap mining (issue 15): recent questions the FAQ could not answer, clustered by meaning per
language, biggest first, with examples; a cluster becomes a draft entry in one click."""

import pytest

from chatbot.models import Conversation
from kb.embedders import get_embedder
from kb.models import Entry
from ops.gaps import DRAFT_ANSWER, gap_questions, gaps_mine
from ops.models import GapCluster, GapRun
from tests.factories import entries_create
from tests.ops.test_transcripts import exchange, user

pytestmark = pytest.mark.django_db

UNANSWERED = [
    "do you sell garden furniture",
    "Do you sell garden furniture?",
    "do you sell any garden furniture",
    "can I pay with bitcoin",
    "can I pay in bitcoin",
    "可以用比特币付款吗",
    "可以用比特币支付吗",
]


@pytest.fixture
def missed():
    entries = entries_create()
    conversation = Conversation.objects.create()
    for text in UNANSWERED:
        exchange(conversation, text, source="handoff", decision={"handoff": "offered"})
    exchange(conversation, "where is my parcel?", source="faq", entry=entries[0])  # answered: no gap
    exchange(conversation, "a person please", source="handoff", decision={"handoff": "requested"})  # no gap
    # Answered, but the customer gave it a thumbs-down: a gap too.
    exchange(conversation, "how long do refunds take", source="faq", entry=entries[1], feedback="down")
    return entries


def test_unanswered_questions_are_clustered_biggest_first(missed):
    counted = {text.lower().rstrip("?"): n for text, n in gap_questions().items()}
    # The same question asked twice (case and punctuation aside) counts twice, under one wording.
    assert counted["do you sell garden furniture"] == 2 and "where is my parcel" not in counted
    assert "how long do refunds take" in counted and len(counted) == 7
    run = gaps_mine(embedder=get_embedder())
    clusters = list(run.clusters.all())
    assert run.questions == 8 and [c.size for c in clusters] == sorted((c.size for c in clusters), reverse=True)
    garden = clusters[0]
    assert garden.size == 3 and garden.distinct == 2 and garden.language == "en"
    assert {text.lower().rstrip("?") for text in garden.examples} == {
        "do you sell garden furniture",
        "do you sell any garden furniture",
    }
    by_text = {text: cluster for cluster in clusters for text in cluster.examples}
    assert by_text["can I pay with bitcoin"] == by_text["can I pay in bitcoin"]
    assert (
        by_text["可以用比特币付款吗"] == by_text["可以用比特币支付吗"]
        and by_text["可以用比特币付款吗"].language == "zh"
    )
    assert by_text["can I pay with bitcoin"] != garden and by_text["可以用比特币付款吗"] != garden
    # A new run replaces the last.
    gaps_mine(embedder=get_embedder())
    assert GapRun.objects.count() == 1


def test_a_cluster_becomes_a_draft_entry(client, missed):
    gaps_mine(embedder=get_embedder())
    client.force_login(user("editor", group="KB editors"))
    page = client.get("/ops/gaps/").content.decode()
    garden = GapCluster.objects.first()
    assert "do you sell any garden furniture" in page and f'action="/ops/gaps/{garden.pk}/draft"' in page
    response = client.post(f"/ops/gaps/{garden.pk}/draft")
    entry = Entry.objects.get(answer=DRAFT_ANSWER)
    assert response.status_code == 302 and response.url == f"/admin/kb/entry/{entry.pk}/change/"
    assert not entry.is_published and entry.question in garden.examples
    assert set(entry.variants.values_list("text", flat=True)) == set(garden.examples)
    client.post(f"/ops/gaps/{garden.pk}/draft")  # twice: the same draft
    assert Entry.objects.filter(answer=DRAFT_ANSWER).count() == 1
    client.force_login(user("agent", group="Agents"))
    assert client.post(f"/ops/gaps/{garden.pk}/draft").status_code == 403


def test_texts_longer_than_a_phrasing_are_left_out_of_a_draft(client):
    run = GapRun.objects.create(window_days=30, questions=3, seconds=0.1)
    long = "why " * 200
    cluster = GapCluster.objects.create(
        run=run, language="en", size=3, distinct=3, representative=long, examples=[long, "why so slow", "why slow"]
    )
    only_long = GapCluster.objects.create(
        run=run, language="en", size=1, distinct=1, representative=long, examples=[long]
    )
    client.force_login(user("editor", group="KB editors"))
    client.post(f"/ops/gaps/{cluster.pk}/draft")
    entry = Entry.objects.get(answer=DRAFT_ANSWER)
    others = entry.variants.filter(is_primary=False).values_list("text", flat=True)
    assert entry.question == "why slow" and list(others) == ["why so slow"]
    page = client.post(f"/ops/gaps/{only_long.pk}/draft", follow=True).content.decode()
    assert "No draft made: every question of this cluster is longer than a phrasing may be." in page

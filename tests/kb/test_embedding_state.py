"""One rule for an entry's embedding state: the admin's counts and filter and the API's summary
agree on entries with failed, pending and embedded phrasings."""

import pytest

from kb import services
from kb.embedding_state import (
    embedding_state,
    embedding_summary,
    entries_in_embedding_state,
    entries_with_embedding_counts,
)
from kb.models import EmbeddingState, Entry, Variant
from tests.factories import entries_create

pytestmark = pytest.mark.django_db


def test_admin_counts_filter_and_api_summary_agree():
    embedded, pending, failed, failed_and_pending = entries_create()
    assert services.variants_embed_batch(limit=10_000).remaining == 0
    services.variant_create(entry=pending, text="a phrasing still waiting for its vector")
    for entry in (failed, failed_and_pending):
        row = services.variant_create(entry=entry, text=f"a phrasing the model choked on {entry.id}")
        services.variants_mark_failed(variant_ids=[row.id], reason="model error")
    services.variant_create(entry=failed_and_pending, text="another phrasing still waiting")
    expected = {
        embedded.id: EmbeddingState.EMBEDDED,
        pending.id: EmbeddingState.PENDING,
        failed.id: EmbeddingState.FAILED,
        failed_and_pending.id: EmbeddingState.FAILED,
    }

    counted = {
        entry.id: embedding_state(failed=entry.n_failed, pending=entry.n_pending)
        for entry in entries_with_embedding_counts(Entry.objects.all())
    }
    summarised = {
        entry.id: embedding_summary(Variant.objects.filter(entry=entry))["state"] for entry in Entry.objects.all()
    }
    filtered = {
        entry_id: state
        for state in EmbeddingState
        for entry_id in entries_in_embedding_state(Entry.objects.all(), state).values_list("id", flat=True)
    }
    assert counted == summarised == filtered == expected
    assert embedding_summary(Variant.objects.filter(entry=failed_and_pending)) == {
        "state": "failed",
        "pending": 1,
        "failed": 1,
        "errors": ["model error"],
    }

"""One rule for an entry's embedding state: the admin's counts and filter and the API's summary
agree on entries with failed, pending and embedded phrasings."""

import pytest

from kb import services
from kb.embedding_state import (
    embedding_counts,
    embedding_state,
    embedding_summary,
    entries_in_embedding_state,
    entries_with_embedding_counts,
    live_revision,
    waiting_for_index,
)
from kb.models import EmbeddingState, Entry, Variant
from tests.factories import entries_create

pytestmark = pytest.mark.django_db


def test_admin_counts_filter_and_api_summary_agree():
    embedded, pending, failed, failed_and_pending = entries_create()
    assert services.variants_embed_batch(limit=10_000).remaining == 0
    services.index_publish()
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
        entry.id: embedding_state(
            failed=entry.n_failed,
            pending=entry.n_pending,
            unindexed=waiting_for_index(entry.changed_revision, entry.live),
        )
        for entry in entries_with_embedding_counts(Entry.objects.all())
    }
    summarised = {
        entry.id: embedding_summary(
            Variant.objects.filter(entry=entry), unindexed=waiting_for_index(entry.changed_revision, live_revision())
        )["state"]
        for entry in Entry.objects.all()
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
        "in_index": True,
        "errors": ["model error"],
    }


def test_an_entry_is_embedded_only_once_the_live_index_holds_it():
    """Vectors are stored before the index that holds them is published: until then the entry is
    pending in the admin, its filter, the API and the import progress counts."""
    entry = entries_create()[0]
    assert services.variants_embed_batch(limit=10_000).remaining == 0
    assert not entry.variants.filter(is_dirty=True).exists()  # every vector stored ...

    def states():
        annotated = entries_with_embedding_counts(Entry.objects.filter(pk=entry.pk)).get()
        unindexed = waiting_for_index(annotated.changed_revision, annotated.live)
        return (
            embedding_state(failed=annotated.n_failed, pending=annotated.n_pending, unindexed=unindexed).value,
            embedding_summary(entry.variants.all(), unindexed=unindexed)["state"],
            list(entries_in_embedding_state(Entry.objects.filter(pk=entry.pk), "embedded")),
            embedding_counts(Entry.objects.filter(pk=entry.pk)),
        )

    # ... but no index is live yet: pending everywhere.
    assert states() == ("pending", "pending", [], {"pending": 1, "embedded": 0, "failed": 0})
    services.index_publish()
    assert states() == ("embedded", "embedded", [entry], {"pending": 0, "embedded": 1, "failed": 0})
    # An answer edit needs no new vector, but the live index still holds the old answer.
    services.entry_update(entry=entry, answer="Open Orders, then Track.")
    assert states()[:3] == ("pending", "pending", [])
    services.index_publish()
    assert states()[0] == "embedded"
    # So does unpublishing: the entry is still answered until the next index version.
    services.entries_set_published(entry_ids=[entry.pk], published=False)
    assert states()[0] == "pending"

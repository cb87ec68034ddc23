import numpy as np
import pytest

from kb import services
from kb.embedders import get_embedder
from kb.models import EmbeddingState, IndexVersion, Variant
from kb.selectors import entry_search, published_entry_rows
from tests.factories import entries_create, kb_embed_and_publish

pytestmark = pytest.mark.django_db


def test_entry_create_makes_primary_and_alternate_phrasings_dirty():
    entry = services.entry_create(
        question="  How do I track   my order? ",
        answer="Account > Orders.",
        category="orders",
        variants=["where is my package", "where is my package", "", "How do I track my order?"],
    )
    texts = list(entry.variants.values_list("text", "is_primary", "is_dirty", "embedding_state"))
    assert texts == [
        ("How do I track my order?", True, True, EmbeddingState.PENDING),
        ("where is my package", False, True, EmbeddingState.PENDING),
    ]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"question": "", "answer": "a"}, "question is empty"),
        ({"question": "q", "answer": "   "}, "answer is empty"),
        ({"question": "q", "answer": "a", "language": "xx"}, "unknown language"),
        ({"question": "q" * 501, "answer": "a"}, "longer than 500"),
        ({"question": "q", "answer": "a", "variants": ["v" * 501]}, "longer than 500"),
    ],
)
def test_entry_create_rejects_bad_fields(fields, message):
    with pytest.raises(services.EntryInvalid, match=message):
        services.entry_create(**fields)
    assert Variant.objects.count() == 0


def test_embed_batch_is_bounded_and_stores_unit_vectors():
    entries_create()
    total = Variant.objects.count()
    first = services.variants_embed_batch(limit=3)
    assert (first.selected, first.embedded, first.remaining) == (3, 3, total - 3)
    stored = Variant.objects.filter(is_dirty=False)
    assert stored.count() == 3
    for variant in stored:
        vector = np.frombuffer(variant.embedding, dtype=np.float32)
        assert vector.shape == (get_embedder().dimension,)
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
        assert variant.embedding_state == EmbeddingState.EMBEDDED


def test_edit_during_batch_stays_dirty(monkeypatch):
    entry = entries_create()[0]
    embedder = get_embedder()
    real_encode = embedder.encode

    def encode_while_editor_saves(texts):
        # An editor changes the primary question while the model is busy with the batch.
        services.entry_update(entry=entry, question="How can I follow my delivery?")
        return real_encode(texts)

    monkeypatch.setattr(embedder, "encode", encode_while_editor_saves)
    result = services.variants_embed_batch(limit=100)
    primary = entry.variants.get(is_primary=True)
    assert primary.text == "How can I follow my delivery?"
    assert primary.is_dirty and primary.embedding is None
    assert result.stale == 1 and result.remaining == 1


def test_unchanged_phrasings_keep_their_vectors_on_update():
    entry = entries_create()[0]
    kb_embed_and_publish()
    services.entry_update(entry=entry, answer="New answer", variants=["Where is my package?", "parcel status"])
    states = dict(entry.variants.values_list("text", "is_dirty"))
    assert states == {"How do I track my order?": False, "Where is my package?": False, "parcel status": True}


def test_model_failure_marks_rows_failed_and_does_not_loop(monkeypatch):
    entries_create()
    embedder = get_embedder()

    def broken(texts):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(embedder, "encode", broken)
    result = services.variants_embed_batch(limit=4)
    assert result.embedded == 0
    failed = Variant.objects.filter(embedding_state=EmbeddingState.FAILED)
    assert failed.count() == 4
    assert all("model exploded" in v.embedding_error and v.is_dirty for v in failed)
    # The failed rows are not picked again, so the rest still gets embedded.
    monkeypatch.undo()
    rest = services.variants_embed_batch(limit=100)
    assert rest.selected == Variant.objects.count() - 4 and rest.remaining == 0


def test_publish_search_aggregates_per_entry_and_respects_publication():
    track, returns, *_ = entries_create()
    version = kb_embed_and_publish()
    assert version.vector_count == Variant.objects.count()
    assert (version.entry_count, version.dimension) == (4, get_embedder().dimension)

    result = entry_search(query="where's my parcel?", k=3)
    assert result.index_version == version.pk
    assert [hit.entry_id for hit in result.hits][0] == track.id
    assert len({hit.entry_id for hit in result.hits}) == len(result.hits) == 3
    assert result.hits[0].score > result.hits[1].score

    # Unpublished between index versions: the database filter hides it at once...
    services.entry_update(entry=track, is_published=False)
    assert track.id not in [hit.entry_id for hit in entry_search(query="where's my parcel?").hits]
    # ...and the next version leaves its vectors out.
    newer = services.index_publish()
    assert newer.pk > version.pk and newer.entry_count == 3


def test_publish_if_stale_skips_when_nothing_changed():
    entries_create()
    kb_embed_and_publish()
    assert services.index_publish_if_stale(revision=services.kb_revision()) is None
    services.entry_create(question="Do you ship abroad?", answer="Yes, to 40 countries.")
    assert services.index_publish_if_stale(revision=services.kb_revision()) is not None
    assert IndexVersion.objects.count() == 2


def test_an_edit_committed_between_the_dirty_check_and_the_publish_is_published_later():
    # The order of one kb_refresh run racing an editor's save (a CI failure): the run reads the
    # revision, finds nothing dirty, the edit commits, then the run publishes.
    entries = entries_create()
    kb_embed_and_publish()
    # An edit that dirties nothing (unpublishing) makes the index stale without work to embed.
    services.entry_update(entry=entries[0], is_published=False)
    revision = services.kb_revision()
    assert services.variants_embed_batch().remaining == 0
    services.entry_create(question="Do you ship abroad?", answer="Yes, to 40 countries.")
    racing = services.index_publish_if_stale(revision=revision)
    assert racing is not None and racing.entry_count == 3
    # The run the edit enqueued embeds the new phrasing; its publish must not be skipped.
    revision = services.kb_revision()
    assert services.variants_embed_batch().embedded == 1
    version = services.index_publish_if_stale(revision=revision)
    assert version is not None and version.entry_count == 4


def test_old_index_files_are_removed(settings):
    entries_create()
    kb_embed_and_publish()
    for _ in range(4):
        services.index_publish()
    files = sorted(path.name for path in settings.KB_INDEX_DIR.glob("index-v*.npz"))
    assert files == [v.filename for v in IndexVersion.objects.order_by("id")][-settings.KB_INDEX_KEEP_VERSIONS :]


def test_english_only_embedder_does_not_search_what_it_cannot_read(settings):
    settings.KB_EMBEDDER = "kb.embedders.SentenceTransformerEmbedder"
    entries_create()
    kb_embed_and_publish()
    result = entry_search(query="请问怎么退货")
    assert result.readable is False and result.hits == []
    assert entry_search(query="where is my parcel").hits


def test_routed_embedder_answers_chinese_and_across_languages():
    track, returns, payment, _ = entries_create()
    zh = services.entry_create(
        question="可以开发票吗？",
        answer="可以，下单时选择开具发票。",
        language="zh",
        variants=["怎么开发票", "需要增值税发票"],
    )
    version = kb_embed_and_publish()
    assert version.dimension == 384 + 512
    assert entry_search(query="能开发票吗").hits[0].entry_id == zh.id
    # A Chinese question finds the English-only entry (multilingual USE side of the index)...
    assert entry_search(query="我的包裹在哪里？").hits[0].entry_id == track.id
    # ...while an English question is scored by MiniLM alone.
    embedder = get_embedder()
    assert embedder.query_weight("where is my parcel?") == 1.0 and embedder.query_weight("我的包裹在哪里") == 0.0
    assert entry_search(query="where is my parcel?").hits[0].entry_id == track.id


def test_an_edit_sends_one_kb_refresh_by_the_task_name(settings, monkeypatch, django_capture_on_commit_callbacks):
    from kb.tasks import kb_refresh

    # Sent by name (kb.services does not import kb.tasks): the name must stay the task's own.
    assert services.KB_REFRESH_TASK == kb_refresh.name
    sent = []

    class Broker:
        def send_task(self, name, **options):
            sent.append(name)

    monkeypatch.setattr(services, "current_app", Broker())
    # The web side's idea of the pool size does not matter: the embedding worker fans out (kb.tasks).
    settings.CELERY_WORKER_CONCURRENCY = 3
    with django_capture_on_commit_callbacks(execute=True):
        services.entry_create(question="How do I track my order?", answer="Account > Orders.")
    assert sent == [kb_refresh.name]


def test_published_entry_rows_reads_published_entries_with_their_translations():
    track, returns, *_ = entries_create()
    services.entry_update(entry=track, translations={"zh": "在账户里查看订单"})
    services.entry_update(entry=returns, is_published=False)
    rows = {row[0]: row for row in published_entry_rows({track.id, returns.id, 10**9})}
    assert list(rows) == [track.id]  # unpublished and missing entries are left out
    entry_id, question, answer, language, translations = rows[track.id]
    assert (question, answer, language) == (track.question, track.answer, track.language)
    assert translations == {"zh": "在账户里查看订单"}
    assert published_entry_rows(set()) == []

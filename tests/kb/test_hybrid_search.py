"""Hybrid retrieval through the real services and index files: dense (FAISS) + BM25, fused per
entry, with EntryHit.score always the dense cosine that the answer thresholds compare."""

import dataclasses

import numpy as np
import pytest
from django.core.management import call_command

from kb import services
from kb.embedders import get_embedder
from kb.keyword import TOKENIZER_VERSION, keyword_index_build, text_tokenize
from kb.models import Entry, IndexVersion, Variant
from kb.selectors import Fusion, current_index, entries_fuse, entry_search
from kb.vector_index import read_index_file, write_index_file
from tests.factories import entries_create, kb_embed_and_publish

pytestmark = pytest.mark.django_db

WARRANTY = {
    "question": "Do you sell extended warranties?",
    "answer": "Yes: two extra years for 10% of the price, at checkout.",
    "category": "warranty",
    "variants": ["can I buy a longer guarantee", "warranty extension for electronics"],
}
BLENDER = {
    "question": "Which blender parts are dishwasher safe?",
    "answer": "The jug and the lid, top rack only; wipe the motor base.",
    "category": "products",
    "variants": ["Can the ZX-4410 jug go in the dishwasher?", "cleaning the blender"],
}


@pytest.fixture
def demo_kb(settings):
    """The demo knowledge base (26 English and 14 Chinese entries) plus two English-only entries,
    embedded and published."""
    call_command("kb_import", str(settings.KB_DEMO_FILE), verbosity=0)
    extra = {"warranty": services.entry_create(**WARRANTY), "blender": services.entry_create(**BLENDER)}
    kb_embed_and_publish()
    return extra


def entry_id(question: str) -> int:
    return Entry.objects.get(question=question).id


def best_dense(query: str, entry: int) -> tuple[float, int]:
    """An entry's best phrasing for a query, computed here from the vectors stored in the database."""
    vector = get_embedder().encode_query(query)
    scored = [
        (float(np.frombuffer(embedding, dtype=np.float32) @ vector), variant_id)
        for variant_id, embedding in Variant.objects.filter(entry_id=entry).values_list("id", "embedding")
    ]
    return max(scored)


@pytest.fixture
def hybrid_everywhere(settings):
    """Hybrid search for every question, English too (by default only Chinese ones)."""
    settings.KB_HYBRID_SEARCH = True
    settings.KB_HYBRID_LANGUAGES = ["en", "zh"]


@pytest.mark.parametrize("hybrid", [True, False])
@pytest.mark.parametrize(
    "query, expected",
    [
        ("where is my package", "How can I track my order?"),
        ("i was billed two times", "I was charged twice for my order. What should I do?"),
        ("我的快递到哪了呀", "怎么查询我的订单物流？"),
        ("能不能开发票", "可以开发票吗？"),
        # Chinese questions about entries that exist only in English (multilingual USE side).
        ("你们卖延长保修吗", WARRANTY["question"]),
        ("礼品卡怎么用", "How do I use a gift card?"),
    ],
)
def test_questions_find_their_entry_with_hybrid_on_and_off(
    settings, demo_kb, hybrid_everywhere, hybrid, query, expected
):
    settings.KB_HYBRID_SEARCH = hybrid
    result = entry_search(query=query)
    assert result.mode == ("hybrid" if hybrid else "dense")
    assert result.hits[0].entry_id == entry_id(expected)
    # The score stays the dense cosine of the entry's best phrasing in both modes.
    assert result.hits[0].score == pytest.approx(best_dense(query, result.hits[0].entry_id)[0], abs=1e-5)
    if hybrid:
        assert "keyword" in result.timings_ms
        fused = [hit.fused_score for hit in result.hits]
        assert None not in fused and fused == sorted(fused, reverse=True)
    else:
        assert all(hit.keyword_score is None and hit.fused_score is None for hit in result.hits)
        assert [hit.score for hit in result.hits] == sorted((hit.score for hit in result.hits), reverse=True)


def test_by_default_only_chinese_questions_are_hybrid(demo_kb):
    assert entry_search(query="where is my package").mode == "dense"
    chinese = entry_search(query="我的快递到哪了")
    assert chinese.mode == "hybrid"
    assert chinese.hits[0].entry_id == entry_id("怎么查询我的订单物流？")
    assert chinese.hits[0].keyword_score > 0


@pytest.mark.parametrize("method", ["rrf", "score"])
def test_entry_found_only_by_keywords_gets_its_real_dense_score(settings, demo_kb, hybrid_everywhere, method):
    # One entry per source takes part and keywords weigh heavily, so BM25's best entry comes first.
    settings.KB_HYBRID_FUSION = method
    settings.KB_HYBRID_DEPTH = 1
    settings.KB_HYBRID_KEYWORD_WEIGHT = 2.0
    query = "ZX-4410 refund"
    blender = demo_kb["blender"].id
    index = current_index.get()
    vector = get_embedder().encode_query(query)
    # Precondition: dense search alone does not reach the blender entry at this depth...
    assert blender not in {entry for _, entry, _ in index.dense_candidates(vector, entries=1)}
    # ...while keywords rank it first.
    assert index.keyword_candidates(text_tokenize(query), entries=1)[0][1] == blender

    hit = entry_search(query=query, k=1).hits[0]
    assert hit.entry_id == blender
    assert hit.keyword_score is not None and hit.keyword_score > 0
    assert (hit.score, hit.matched_variant_id) == pytest.approx(best_dense(query, blender), abs=1e-5)
    assert hit.trace() == {
        "entry_id": blender,
        "score": round(hit.score, 4),
        "variant_id": hit.matched_variant_id,
        "keyword_score": round(hit.keyword_score, 4),
        "fused_score": round(hit.fused_score, 6),
    }


@pytest.mark.parametrize("query", ["ZX-4410", "ZX-4410?"])
def test_rare_keyword_ranks_its_entry_first_with_hybrid(settings, demo_kb, hybrid_everywhere, query):
    blender = demo_kb["blender"].id
    settings.KB_HYBRID_SEARCH = False
    # A bare product code says little to the embedder...
    assert entry_search(query=query).hits[0].entry_id != blender
    settings.KB_HYBRID_SEARCH = True
    # ...but is the rarest keyword of one phrasing.
    top = entry_search(query=query).hits[0]
    assert top.entry_id == blender
    assert top.score == pytest.approx(best_dense(query, blender)[0], abs=1e-5)


@pytest.mark.parametrize("hybrid", [False, True])
def test_k_entries_come_back_when_one_entry_fills_the_first_phrasings(settings, hybrid_everywhere, hybrid):
    settings.KB_HYBRID_SEARCH = hybrid
    parcel = services.entry_create(
        question="Where is my parcel?",
        answer="Account > Orders > Track.",
        variants=[f"where is my parcel number {number}" for number in range(40)],
    )
    others = entries_create()
    kb_embed_and_publish()
    # The first 8 x k phrasings all belong to the parcel entry; the search fetches further.
    assert {
        entry for _, entry, _ in current_index.get().search(get_embedder().encode_query("where is my parcel"), 24)
    } == {parcel.id}
    hits = entry_search(query="where is my parcel", k=3).hits
    assert len(hits) == 3 and len({hit.entry_id for hit in hits}) == 3
    assert hits[0].entry_id == parcel.id and {hit.entry_id for hit in hits[1:]} <= {entry.id for entry in others}


def test_index_file_without_keyword_data_still_searches(settings, demo_kb):
    settings.KB_HYBRID_SEARCH = True
    published = IndexVersion.objects.get()
    loaded = read_index_file(settings.KB_INDEX_DIR / published.filename, published.pk)
    assert loaded.keyword is not None
    # A file exactly as written before keyword search existed: the dense index and the id maps.
    old = IndexVersion.objects.create(
        filename="index-old-format.npz",
        embedder=published.embedder,
        dimension=published.dimension,
        vector_count=published.vector_count,
        entry_count=published.entry_count,
    )
    variant_ids = np.array(list(loaded.entry_by_variant), dtype=np.int64)
    entry_ids = np.array(list(loaded.entry_by_variant.values()), dtype=np.int64)
    write_index_file(settings.KB_INDEX_DIR / old.filename, loaded.index, variant_ids, entry_ids)
    with np.load(settings.KB_INDEX_DIR / old.filename) as data:
        assert sorted(data.files) == ["entry_ids", "index", "variant_ids"]

    result = entry_search(query="where is my package")
    assert result.index_version == old.pk
    assert result.mode == "dense"
    assert result.hits[0].entry_id == entry_id("How can I track my order?")
    assert all(hit.keyword_score is None and hit.fused_score is None for hit in result.hits)


def test_file_from_another_tokenizer_is_tokenized_again_on_load(settings, demo_kb):
    published = IndexVersion.objects.get()
    path = settings.KB_INDEX_DIR / published.filename
    loaded = read_index_file(path, published.pk)
    rows = list(
        Variant.objects.filter(id__in=list(loaded.entry_by_variant))
        .order_by("id")
        .values_list("id", "entry_id", "text")
    )
    variant_ids = np.array([row[0] for row in rows], dtype=np.int64)
    entry_ids = np.array([row[1] for row in rows], dtype=np.int64)
    texts = [row[2] for row in rows]
    # An older tokenizer's index: raw whitespace words, which today's query tokens do not match.
    stale = dataclasses.replace(
        keyword_index_build(tokens=[text.split() for text in texts], variant_ids=variant_ids, entry_ids=entry_ids),
        tokenizer_version=TOKENIZER_VERSION - 1,
    )
    write_index_file(path, loaded.index, variant_ids, entry_ids, keyword=stale, texts=texts)

    reloaded = read_index_file(path, published.pk)
    assert reloaded.keyword.tokenizer_version == TOKENIZER_VERSION
    top = reloaded.keyword_candidates(text_tokenize("我的快递到哪了"), entries=1)[0]
    assert top[1] == entry_id("怎么查询我的订单物流？")


def test_unreadable_question_gets_keyword_hits_that_never_pass_a_threshold(settings):
    settings.KB_EMBEDDER = "kb.embedders.SentenceTransformerEmbedder"
    invoice = services.entry_create(
        question="可以开发票吗？", answer="可以，下单时选择开具发票。", language="zh", variants=["怎么申请电子发票"]
    )
    services.entry_create(question="How do I track my order?", answer="Account > Orders.")
    kb_embed_and_publish()

    settings.KB_HYBRID_SEARCH = False
    assert entry_search(query="电子发票").hits == []

    settings.KB_HYBRID_SEARCH = True
    result = entry_search(query="电子发票")
    assert result.readable is False and result.mode == "hybrid"
    assert [hit.entry_id for hit in result.hits] == [invoice.id]
    assert result.hits[0].score == 0.0 and result.hits[0].keyword_score > 0


def test_fusion_aggregates_each_source_per_entry_before_ranking():
    # Entry 1 has many good dense phrasings, entry 2 one; keywords prefer entry 2.
    dense = [(11, 1, 0.90), (12, 1, 0.89), (13, 1, 0.88), (21, 2, 0.87), (31, 3, 0.50)]
    keyword = [(22, 2, 7.0), (14, 1, 3.0), (15, 1, 2.9), (32, 3, 1.0)]
    assert [e.entry_id for e in entries_fuse(dense, keyword, k=3, hybrid=False)] == [1, 2, 3]
    off = entries_fuse(dense, keyword, k=3, hybrid=False)[0]
    assert (off.score, off.variant_id, off.keyword_score, off.fused_score) == (0.90, 11, None, None)

    fused = entries_fuse(dense, keyword, k=3, hybrid=True, fusion=Fusion(rrf_k=60, keyword_weight=1.0, depth=20))
    # Ranks (1, 2) and (2, 1) tie on RRF: the better dense score wins the tie.
    assert [e.entry_id for e in fused] == [1, 2, 3]
    assert fused[0].fused_score == pytest.approx(1 / 61 + 1 / 62)
    assert (fused[1].score, fused[1].variant_id, fused[1].keyword_score, fused[1].keyword_variant_id) == (
        0.87,
        21,
        7.0,
        22,
    )
    heavier = entries_fuse(dense, keyword, k=3, hybrid=True, fusion=Fusion(rrf_k=60, keyword_weight=1.5, depth=20))
    assert [e.entry_id for e in heavier][:2] == [2, 1]
    # Only each source's top `depth` entries count; other candidates follow, by dense score.
    shallow = entries_fuse(dense, keyword, k=3, hybrid=True, fusion=Fusion(rrf_k=60, keyword_weight=1.0, depth=1))
    assert [(e.entry_id, e.fused_score) for e in shallow] == [
        (1, pytest.approx(1 / 61)),
        (2, pytest.approx(1 / 61)),
        (3, 0.0),
    ]
    # No dense hits (an unreadable question): keyword order.
    assert [e.entry_id for e in entries_fuse([], keyword, k=3, hybrid=True)] == [2, 1, 3]

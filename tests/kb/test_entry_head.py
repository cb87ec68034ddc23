"""The entry classifier (kb.entry_head): it is kept only where it beats the cosine on held-out
phrasings, reused while the entries stay the same, stored in the index file, ranks dense questions
by cosine + weight x log P while the reported score stays the cosine, and gives the answer
confidence two more features. Clustered vectors (tests.cluster_embedder) make "the classifier
helps" certain; well-separated ones make "it does not" certain."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kb import services
from kb.entry_head import WEIGHTS, EntryHead, entries_key, entry_head_fit, phrasing_head_rows, question_head_inputs
from kb.models import Entry, IndexVersion, Variant
from kb.selectors import current_index, entry_search, index_entries_rank
from kb.vector_index import LoadedIndex, build_index, read_index_file, write_index_file
from tests.cluster_embedder import ClusterEmbedder, clear_view
from tests.factories import entries_create, kb_embed_and_publish

TOPICS, PHRASINGS = 10, 30


def _texts(topics=TOPICS, phrasings=PHRASINGS, start=0):
    return [(f"topic {t} #{n}", t + 1) for t in range(topics) for n in range(start, start + phrasings)]


def _vectors(items):
    embedder = ClusterEmbedder()
    return embedder.encode([text for text, _ in items]), np.array([entry for _, entry in items], dtype=np.int64)


def _fit(items, **kwargs):
    vectors, entry_ids = _vectors(items)
    return entry_head_fit(vectors, entry_ids, vectors, vectors, np.arange(len(vectors)), **kwargs), vectors, entry_ids


def _index(vectors, entry_ids, head=None):
    variant_ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    return LoadedIndex.create(
        version=1,
        index=build_index(vectors, variant_ids, vectors.shape[1]),
        variant_ids=variant_ids,
        entry_ids=entry_ids,
        head=head,
    )


def _top1(index, queries, truth):
    ranked = [index_entries_rank(index=index, vector=q, tokens=[], k=5, hybrid=False) for q in queries]
    return float(np.mean([r[0].entry_id == t for r, t in zip(ranked, truth, strict=True)])), ranked


def test_kept_where_it_beats_the_cosine_and_ranks_new_questions_better():
    fitted, vectors, entry_ids = _fit(_texts())
    report = fitted.report
    assert fitted.head is not None and report["kept"] is True
    assert report["top1_with_head"] > report["top1_cosine"] and report["p_value"] < 0.05
    assert report["weight"] in WEIGHTS and report["held_out"] == TOPICS * round(PHRASINGS * 0.2)
    assert report["entries_key"] == entries_key(entry_ids)
    assert list(fitted.head.entry_ids) == list(range(1, TOPICS + 1))
    log_p = fitted.head.log_probabilities(vectors[0])
    assert log_p.shape == (TOPICS,) and np.exp(log_p).sum() == pytest.approx(1.0, abs=1e-5)

    # Questions never seen: ranked better with the classifier than by cosine alone.
    queries, truth = _vectors(_texts(start=1000, phrasings=20))
    cosine_top1, _ = _top1(_index(vectors, entry_ids), queries, truth)
    head_top1, ranked = _top1(_index(vectors, entry_ids, fitted.head), queries, truth)
    assert head_top1 > cosine_top1 + 0.05
    # The score stays the cosine of the entry's best phrasing; the fused score is what ranked it.
    first = ranked[0][0]
    best_cosine = max(float(vectors[i] @ queries[0]) for i in np.flatnonzero(entry_ids == first.entry_id))
    assert first.score == pytest.approx(best_cosine, abs=1e-5)
    group = first.entry_id - 1
    assert first.fused_score == pytest.approx(
        first.score + fitted.head.weight * fitted.head.log_probabilities(queries[0])[group], abs=1e-5
    )
    fused = [entry.fused_score for entry in ranked[0]]
    assert fused == sorted(fused, reverse=True)


def test_refused_where_the_cosine_is_already_right():
    items = _texts()
    vectors, entry_ids = _vectors(items)
    # Tight clusters: the nearest phrasing is always of the right entry.
    directions = np.stack([vectors[entry_ids == e].mean(axis=0) for e in range(1, TOPICS + 1)])
    tight = directions[entry_ids - 1] + 0.01 * vectors
    tight /= np.linalg.norm(tight, axis=1, keepdims=True)
    fitted = entry_head_fit(tight, entry_ids, tight, tight, np.arange(len(tight)))
    assert fitted.head is None and fitted.report["kept"] is False
    assert fitted.report["top1_cosine"] == 1.0
    assert "not better beyond noise" in fitted.report["reason"]


def test_declines_a_knowledge_base_too_small_to_measure():
    fitted, _, _ = _fit(_texts(topics=5, phrasings=30))
    assert fitted.head is None and "too few phrasings" in fitted.report["reason"]
    fitted, _, _ = _fit(_texts(topics=12, phrasings=3))
    assert fitted.head is None and "too few phrasings" in fitted.report["reason"]


def test_same_entries_reuse_the_choice_and_new_entries_choose_again():
    first, _, _ = _fit(_texts())
    again, _, _ = _fit(_texts(), previous=first.head, previous_report=first.report)
    assert again.report["reused"] is True and again.head is not None
    assert again.head.weight == first.head.weight and again.report["top1_with_head"] == first.report["top1_with_head"]

    declined = {
        "entries_key": first.report["entries_key"],
        "kept": False,
        "reason": "not better",
        "held_out": 60,
        "phrasings": TOPICS * PHRASINGS,
    }
    skipped, _, _ = _fit(_texts(), previous_report=declined)
    assert skipped.head is None and skipped.report["reused"] is True and skipped.report["reason"] == "not better"
    # Many more phrasings since, or a decline for size: measured again.
    assert "reused" not in _fit(_texts(phrasings=40), previous_report=declined)[0].report
    too_small = {"entries_key": first.report["entries_key"], "kept": False, "reason": "too few phrasings"}
    again_measured, _, _ = _fit(_texts(), previous_report=too_small)
    assert "reused" not in again_measured.report and again_measured.head is not None

    # Another input: chosen again (the weight was chosen for what the classifier read then).
    other_input, _, _ = _fit(_texts(), previous=first.head, previous_report=first.report, reads="question")
    assert "reused" not in other_input.report and other_input.head.reads == "question"

    grown, _, _ = _fit(_texts(topics=TOPICS + 1), previous=first.head, previous_report=first.report)
    assert "reused" not in grown.report and grown.report["entries_key"] != first.report["entries_key"]


def test_the_index_file_keeps_the_classifier_and_a_mismatched_one_is_dropped(tmp_path):
    fitted, vectors, entry_ids = _fit(_texts())
    variant_ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    path = tmp_path / "index.npz"
    index = build_index(vectors, variant_ids, vectors.shape[1])
    write_index_file(path, index, variant_ids, entry_ids, head=fitted.head)
    loaded = read_index_file(path, 7)
    assert np.array_equal(loaded.head.coef, fitted.head.coef) and loaded.head.weight == fitted.head.weight
    assert loaded.head.reads == "both"
    write_index_file(path, index, variant_ids, entry_ids, head=dataclasses.replace(fitted.head, reads="question"))
    assert read_index_file(path, 8).head.reads == "question"
    assert np.array_equal(loaded.head.entry_ids, loaded.scan.entry_ids)

    other = dataclasses.replace(fitted.head, entry_ids=fitted.head.entry_ids + 100)
    assert _index(vectors, entry_ids, other).head is None
    assert EntryHead.from_arrays({"index": np.zeros(1)}) is None


def test_routed_rows_are_the_phrasings_as_questions_reach_the_classifier():
    """The language-routed embedder: an English phrasing is learned from as an English question
    reaches the classifier (MiniLM and USE side by side, as stored) and measured with the cosine of
    its query form; every phrasing is also learned from in its USE form (a question in another
    language). A question's classifier input matches its phrasing's row."""
    from kb.embedders import embedder_for

    embedder = embedder_for("")
    texts = ["how do I reset my password", "我的订单什么时候到", "where is my parcel"]
    stored = embedder.encode(texts)
    rows, queries, row_phrasing = phrasing_head_rows(embedder, stored, texts)
    assert list(row_phrasing) == [0, 2, 0, 1, 2]
    assert np.allclose(rows[:2], stored[[0, 2]])
    asked = embedder.encode_queries(texts)
    inputs = question_head_inputs(embedder, texts, asked)
    english = embedder.dimension - embedder.multilingual_model.dimension
    use = embedder.multilingual_model.encode(texts)
    for row, phrasing in ((0, 0), (1, 2)):
        # Questions run on the 8-bit MiniLM, phrasings on the full one: close, not equal.
        assert float(queries[row] @ asked[phrasing]) / float(np.linalg.norm(asked[phrasing]) ** 2) > 0.97
        assert np.allclose(queries[row, english:], 0)
        assert float(rows[row] @ inputs[phrasing]) > 0.97
        assert np.allclose(inputs[phrasing, english:], use[phrasing] / np.sqrt(2), atol=1e-5)
    # USE forms: the Chinese question's input is its query; every phrasing has its USE row.
    assert np.allclose(inputs[1], asked[1])
    assert np.allclose(rows[2:, :english], 0) and np.allclose(rows[2:, english:], use * np.sqrt(2), atol=1e-5)
    assert np.allclose(queries[2:], rows[2:])
    assert np.allclose(rows[3], asked[1], atol=1e-5)

    # Reading the question alone: rows and inputs are the query forms (no USE call for English).
    rows, queries, _ = phrasing_head_rows(embedder, stored, texts, "question")
    assert np.array_equal(rows, queries)
    assert np.array_equal(question_head_inputs(embedder, texts, asked, "question"), asked)


def _cluster_entries_create():
    """One entry per topic, its phrasings "topic t #0" .. "topic t #29"."""
    entries_create(
        [
            {
                "question": f"topic {t} #0",
                "answer": f"Answer {t}.",
                "category": f"t{t}",
                "variants": [f"topic {t} #{n}" for n in range(1, PHRASINGS)],
            }
            for t in range(TOPICS)
        ]
    )


@pytest.fixture
def cluster_kb(db, settings):
    settings.KB_EMBEDDER = "tests.cluster_embedder.ClusterEmbedder"
    settings.KB_HYBRID_SEARCH = False
    _cluster_entries_create()
    return kb_embed_and_publish()


def test_publishing_fits_it_and_live_search_ranks_with_it(cluster_kb, settings, admin_client):
    version = IndexVersion.objects.get(pk=cluster_kb.pk)
    assert version.entry_head["kept"] is True and version.entry_head["p_value"] < 0.05
    result = entry_search(query="topic 4 #2000", features=True)
    assert result.mode == "dense+classifier"
    assert {"head_logp", "head_margin", "head_entropy"} <= set(result.features)
    assert result.hits[0].fused_score is not None
    assert result.hits[0].score < result.hits[0].fused_score + 1  # the cosine, not the fused score
    loaded = current_index.get()
    assert loaded.version == version.pk and loaded.head is not None
    page = admin_client.get("/admin/kb/indexversion/").content.decode()
    assert f"ranks (weight {version.entry_head['weight']}" in page and "by cosine" in page
    # Hit testing tells the editor what ranked the entries, since that is not their score order.
    page = admin_client.post("/admin/kb/entry/hit-testing/", {"questions": "topic 4 #2000"}).content.decode()
    assert page.count("with the entry classifier") == len(result.hits)

    # A phrasing edited: same entries, so the weight is kept and the classifier refitted.
    variant = Variant.objects.filter(entry__question="topic 3 #0").exclude(text="topic 3 #0").first()
    services.variant_update(variant=variant, text="topic 3 #777")
    republished = kb_embed_and_publish()
    assert republished.entry_head["reused"] is True and republished.entry_head["weight"] == version.entry_head["weight"]
    assert current_index.get().head is not None

    # Switched off: the index ranks by cosine alone.
    settings.KB_ENTRY_CLASSIFIER = False
    services.variant_update(variant=variant, text="topic 3 #778")
    plain = kb_embed_and_publish()
    assert plain.entry_head == {} and entry_search(query="topic 4 #2000").mode == "dense"
    assert "not used" not in admin_client.get("/admin/kb/indexversion/").content.decode()


def test_a_confidence_model_that_reads_the_classifier_falls_back_to_the_score_without_it(cluster_kb, settings):
    """A model kb_calibrate fitted with the classifier's features, on an index published without a
    classifier: the score decides and the trace says why (it never fails the answer)."""
    from chatbot.confidence import ConfidenceModel
    from chatbot.models import DecisionThresholds
    from chatbot.pipeline import answer_question
    from chatbot.selectors import _thresholds_cache
    from kb.retrieval_features import FEATURES, HEAD_FEATURES

    names = FEATURES + HEAD_FEATURES
    model = ConfidenceModel(
        features=names,
        mean=(0.0,) * len(names),
        scale=(1.0,) * len(names),
        coef=(0.1,) * len(names),
        intercept=0.0,
        embedder="cluster-test",
    )
    DecisionThresholds.objects.update_or_create(
        language="en", defaults={"answer_confidence": 0.5, "confidence_model": model.as_json()}
    )
    settings.CHATBOT_THRESHOLDS_CACHE_SECONDS = 0
    _thresholds_cache.clear()
    with_head = answer_question("topic 4 #2000", llm_available=False)
    assert with_head.confidence is not None
    assert set(with_head.decision.decision_json()["confidence"]["features"]) == set(names)

    settings.KB_ENTRY_CLASSIFIER = False
    services.variant_update(variant=Variant.objects.filter(text="topic 3 #5").get(), text="topic 3 #555")
    kb_embed_and_publish()
    without = answer_question("topic 4 #2000", llm_available=False)
    trace = without.decision.decision_json()["confidence"]
    assert without.confidence is None and trace["value"] is None
    assert "head_logp" in trace["unused"] and "kb_calibrate" in trace["unused"]
    _thresholds_cache.clear()


def test_gated_reranks_close_questions_with_a_second_classifier_and_only_those():
    items = _texts()
    vectors, entry_ids = _vectors(items)
    both = np.hstack([vectors, clear_view([text for text, _ in items])])
    fitted = entry_head_fit(
        vectors, entry_ids, vectors, vectors, np.arange(len(vectors)), reads="gated", rerank_rows=both
    )
    report, head = fitted.report, fitted.head
    assert report["reads"] == "gated" and report["reranks"] is True and head.reads == "question"
    assert head.rerank is not None and head.rerank.reads == "both" and head.rerank.coef.shape[1] == both.shape[1]
    assert report["top1_reranked"] > report["top1_with_head"]
    assert head.rerank_margin == report["rerank_margin"] and 0 < report["rerank_share"] < 1

    new_items = _texts(start=1000, phrasings=20)
    queries, truth = _vectors(new_items)
    second = np.hstack([queries, clear_view([text for text, _ in new_items])])
    index = _index(vectors, entry_ids, head)
    calls = []

    def rank(number, rerank=True):
        def rerank_input():
            calls.append(number)
            return second[number]

        return index_entries_rank(
            index=index,
            vector=queries[number],
            tokens=[],
            k=5,
            hybrid=False,
            rerank_input=rerank_input if rerank else None,
        )

    first_only = [rank(n, rerank=False)[0].entry_id for n in range(len(queries))]
    gated = [rank(n)[0].entry_id for n in range(len(queries))]
    assert np.mean(np.array(gated) == truth) > np.mean(np.array(first_only) == truth)
    # The second classifier was asked about the close questions only, and they alone changed.
    assert 0 < len(calls) < len(queries)
    changed = {n for n in range(len(queries)) if gated[n] != first_only[n]}
    assert changed <= set(calls)

    # The index file keeps both classifiers and the margin; the same entries reuse all of it.
    loaded = EntryHead.from_arrays(head.arrays())
    assert np.array_equal(loaded.rerank.coef, head.rerank.coef) and loaded.rerank_margin == head.rerank_margin
    again = entry_head_fit(
        vectors,
        entry_ids,
        vectors,
        vectors,
        np.arange(len(vectors)),
        reads="gated",
        rerank_rows=both,
        previous=loaded,
        previous_report=report,
    )
    assert again.report["reused"] is True and again.head.rerank is not None
    assert again.head.rerank.weight == head.rerank.weight and again.head.rerank_margin == head.rerank_margin


def test_gated_keeps_the_first_classifier_alone_where_the_second_adds_nothing():
    items = _texts()
    vectors, entry_ids = _vectors(items)
    fitted = entry_head_fit(
        vectors, entry_ids, vectors, vectors, np.arange(len(vectors)), reads="gated", rerank_rows=vectors.copy()
    )
    assert fitted.head is not None and fitted.head.rerank is None and fitted.report["reranks"] is False
    assert "no better" in fitted.report["rerank_reason"]
    assert "rerank_coef" not in fitted.head.arrays()


def test_publishing_gated_reranks_live_close_questions_only(db, settings, admin_client):
    """KB_ENTRY_CLASSIFIER_INPUT=gated through publishing, live search and the admin: the second
    classifier is fitted and kept, and live search asks for its input (a model call in the product)
    only for questions whose two best entries the first classifier leaves close."""
    from kb.embedders import get_embedder

    settings.KB_EMBEDDER = "tests.cluster_embedder.TwoViewClusterEmbedder"
    settings.KB_HYBRID_SEARCH = False
    settings.KB_ENTRY_CLASSIFIER_INPUT = "gated"
    _cluster_entries_create()
    version = kb_embed_and_publish()
    report = version.entry_head
    assert report["reads"] == "gated" and report["reranks"] is True
    head = current_index.get().head
    assert head.reads == "question" and head.rerank.reads == "both" and head.rerank_margin == report["rerank_margin"]
    page = admin_client.get("/admin/kb/indexversion/").content.decode()
    assert "a second classifier reading both models re-ranks" in page

    embedder = get_embedder()
    embedder.clear_view_calls = 0
    results = [entry_search(query=f"topic {n % TOPICS} #{3000 + n}") for n in range(60)]
    reranked = [result for result in results if "rerank" in result.timings_ms]
    assert 0 < len(reranked) < len(results) and embedder.clear_view_calls == len(reranked)
    assert all(result.mode == "dense+classifier" for result in results)
    entry_of = dict(Entry.objects.values_list("question", "id"))
    right = [result.hits[0].entry_id == entry_of[f"topic {n % TOPICS} #0"] for n, result in enumerate(results)]
    assert sum(right) >= 0.8 * len(results)

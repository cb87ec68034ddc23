"""Retrieval features (kb.retrieval_features) on an index whose geometry is known, so every value
can be worked out by hand."""

import numpy as np
import pytest

from kb.retrieval_features import FEATURES, retrieval_features
from kb.vector_index import LoadedIndex, build_index


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture
def index():
    # Entry 1: three phrasings around the first axis; entry 2: two on the second; entry 3: one on
    # the third. Rows are shuffled so that nothing depends on insertion order.
    rows = {
        101: (1, unit(1, 0, 0, 0)),
        102: (1, unit(1, 0.2, 0, 0)),
        103: (1, unit(1, 0, 0.2, 0)),
        201: (2, unit(0, 1, 0, 0)),
        202: (2, unit(0, 1, 0.1, 0)),
        301: (3, unit(0, 0, 1, 0)),
    }
    order = [202, 101, 301, 103, 201, 102]
    vectors = np.vstack([rows[v][1] for v in order])
    loaded = LoadedIndex.create(
        version=1,
        index=build_index(vectors, np.array(order), 4),
        variant_ids=np.array(order),
        entry_ids=np.array([rows[v][0] for v in order]),
    )
    return loaded, rows


def test_each_feature_is_what_its_definition_says(index):
    loaded, rows = index
    query = unit(1, 0.1, 0, 0)
    features = retrieval_features(loaded.scan, query, "where is my card")
    assert list(features) == list(FEATURES)
    cos = {variant: float(vector @ query) for variant, (_, vector) in rows.items()}
    entry_best = {1: max(cos[101], cos[102], cos[103]), 2: max(cos[201], cos[202]), 3: cos[301]}
    ranked = sorted(entry_best.values(), reverse=True) + [0.0, 0.0]
    assert features["top1"] == pytest.approx(entry_best[1], abs=1e-6)
    assert features["margin"] == pytest.approx(entry_best[1] - entry_best[2], abs=1e-6)
    assert features["gap5"] == pytest.approx(entry_best[1], abs=1e-6)  # fewer than five entries: 0s
    assert features["std5"] == pytest.approx(float(np.std(ranked[:5])), abs=1e-6)
    assert features["best_top3"] == pytest.approx(np.mean([cos[101], cos[102], cos[103]]), abs=1e-6)
    # The six phrasings are all "near": three of the ten (and of the twenty) nearest are entry 1's.
    assert features["knn10"] == pytest.approx(3 / 6) and features["knn20"] == pytest.approx(3 / 6)
    assert features["top10_mean"] == pytest.approx(np.mean(list(cos.values())), abs=1e-6)
    centroid = np.mean([rows[v][1] for v in (101, 102, 103)], axis=0)
    centroid /= np.linalg.norm(centroid)
    assert features["centroid"] == pytest.approx(float(centroid @ query), abs=1e-6)
    other = np.mean([rows[v][1] for v in (201, 202)], axis=0)
    other /= np.linalg.norm(other)
    assert features["centroid_margin"] == pytest.approx(float(centroid @ query - other @ query), abs=1e-6)
    own = [rows[v][1] for v in (101, 102, 103)]
    nearest = [max(float(a @ b) for j, b in enumerate(own) if j != i) for i, a in enumerate(own)]
    assert features["self_gap"] == pytest.approx(entry_best[1] - np.mean(nearest), abs=1e-6)
    assert features["tokens"] == 4


def test_a_question_near_a_one_phrasing_entry_and_an_index_of_one_entry(index):
    loaded, _ = index
    features = retrieval_features(loaded.scan, unit(0, 0, 1, 0.05), "退货")
    # Entry 3 has one phrasing: nothing to be typical of, so its typical similarity counts as 1.
    assert features["self_gap"] == pytest.approx(features["top1"] - 1.0, abs=1e-6)
    assert features["tokens"] == 1
    single = LoadedIndex.create(
        version=1, index=build_index(unit(1, 0, 0, 0)[None, :], np.array([7]), 4), variant_ids=[7], entry_ids=[1]
    )
    alone = retrieval_features(single.scan, unit(1, 0, 0, 0), "hi")
    assert alone["margin"] == pytest.approx(1.0) and alone["centroid_margin"] == pytest.approx(1.0)
    assert alone["knn10"] == 1.0


def test_features_of_the_entry_the_bot_answers_with_when_it_is_not_the_densest(index):
    loaded, rows = index
    query = unit(1, 0.9, 0, 0)  # entry 1 best by cosine, entry 2 close behind
    scores = loaded.scan.phrasing_scores(query)
    own = retrieval_features(loaded.scan, query, "a question", scores=scores)
    assert own == retrieval_features(loaded.scan, query, "a question")  # the same scan, reused
    second = retrieval_features(loaded.scan, query, "a question", scores=scores, entry_id=2)
    entry_2 = max(float(rows[v][1] @ query) for v in (201, 202))
    entry_1 = max(float(rows[v][1] @ query) for v in (101, 102, 103))
    assert second["top1"] == pytest.approx(entry_2)
    assert second["margin"] == pytest.approx(entry_2 - entry_1)  # negative: a better entry exists
    assert retrieval_features(loaded.scan, query, "a question", entry_id=1) == own
    with pytest.raises(KeyError):
        retrieval_features(loaded.scan, query, "a question", entry_id=99)


def test_entry_search_returns_the_features_only_when_asked(db):
    from kb.selectors import entry_search
    from tests.factories import entries_create, kb_embed_and_publish

    entries_create()
    kb_embed_and_publish()
    plain = entry_search(query="where is my parcel")
    assert plain.features is None and "features" not in plain.timings_ms
    with_features = entry_search(query="where is my parcel", features=True)
    assert set(with_features.features) == set(FEATURES)
    assert with_features.features["top1"] == pytest.approx(with_features.hits[0].score, abs=1e-5)
    assert [hit.entry_id for hit in with_features.hits] == [hit.entry_id for hit in plain.hits]

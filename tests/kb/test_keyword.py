"""kb.keyword: the English/Chinese tokenizer and the BM25 index over phrasings."""

from concurrent.futures import ThreadPoolExecutor

import bm25s
import numpy as np
import pytest

from kb.keyword import (
    STOPWORDS_ZH,
    KeywordIndex,
    keyword_index_build,
    keyword_index_from_texts,
    strings_pack,
    strings_unpack,
    text_tokenize,
    texts_tokenize,
)

PHRASINGS = [
    "How do I track my order?",  # entry 1
    "Where is my parcel right now",  # entry 1
    "What is your return policy?",  # entry 2
    "Can I return the ZX-4410 blender?",  # entry 2
    "Which payment methods do you accept?",  # entry 3
    "我的快递到哪了",  # entry 4
    "怎么申请电子发票",  # entry 5
]
ENTRY_IDS = np.array([1, 1, 2, 2, 3, 4, 5])
VARIANT_IDS = np.array([11, 12, 21, 22, 31, 41, 51])


@pytest.fixture(scope="module")
def index() -> KeywordIndex:
    return keyword_index_from_texts(texts=PHRASINGS, variant_ids=VARIANT_IDS, entry_ids=ENTRY_IDS)


def test_english_is_lower_cased_stemmed_and_stop_words_dropped():
    assert text_tokenize("The Orders were SHIPPED to the warehouses") == ["order", "were", "ship", "warehous"]
    # Single letters go (the "t" of "can't"); numbers stay, even single digits.
    assert text_tokenize("I can't pay in 3 instalments") == ["can", "pay", "3", "instal"]


def test_chinese_is_segmented_and_function_words_dropped():
    tokens = text_tokenize("我的快递到哪了？")
    assert "快递" in tokens
    assert not {"我", "的", "了", "？"} & set(tokens)
    # Search-mode segmentation also yields the parts of long words, so 信用卡 matches 信用.
    assert {"信用卡", "信用"} <= set(text_tokenize("信用卡可以分期吗"))
    assert "吗" not in text_tokenize("信用卡可以分期吗")


def test_mixed_text_keeps_order_and_full_width_forms_are_normalised():
    assert text_tokenize("我的iPhone怎么退货") == ["iphon", "退货"]
    assert text_tokenize("型号ＺＸ－４４１０的说明书") == ["型号", "zx", "4410", "说明", "说明书"]


def test_text_of_only_stop_words_or_punctuation_has_no_tokens():
    assert text_tokenize("") == []
    assert text_tokenize("?! ... --") == []
    assert text_tokenize("is it the") == []
    assert text_tokenize("的 了 吗") == []


def test_stop_words_can_be_chosen():
    assert text_tokenize("is it not working", stopwords=STOPWORDS_ZH) == ["is", "it", "not", "work"]
    assert texts_tokenize(["not working", "我的"], stopwords=frozenset()) == [["not", "work"], ["我", "的"]]


def test_tokenizing_from_many_threads_gives_the_same_tokens():
    texts = [f"{text} shipping delivered refunds {number}" for number, text in enumerate(PHRASINGS * 200)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(text_tokenize, texts)) == [text_tokenize(text) for text in texts]


def test_search_ranks_the_phrasing_sharing_rare_words_first(index):
    hits = index.search(text_tokenize("return the ZX-4410"), limit=10)
    assert hits[0][:2] == (22, 2)
    assert [score for _, _, score in hits] == sorted((score for _, _, score in hits), reverse=True)
    # Only phrasings sharing a token come back.
    assert {variant_id for variant_id, _, _ in hits} == {21, 22}
    assert index.search(text_tokenize("快递在哪里"), limit=10)[0][:2] == (41, 4)


def test_scores_are_bm25s_scores(index):
    tokens = texts_tokenize(PHRASINGS)
    reference = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    reference.index(tokens, show_progress=False)
    query = text_tokenize("where is my order")
    assert np.allclose(index.scores(query), reference.get_scores(query), atol=1e-6)


def test_limit_bounds_the_hits(index):
    query = text_tokenize("my order return policy payment")
    assert len(index.search(query, limit=2)) == 2
    assert index.search(query, limit=0) == []


def test_unknown_tokens_and_empty_queries_find_nothing(index):
    assert index.search([], limit=5) == []
    assert index.search(["zzzunknown", "qqq"], limit=5) == []
    # Unknown tokens beside known ones change nothing.
    assert index.search(["zzzunknown", *text_tokenize("return policy")], limit=5) == index.search(
        text_tokenize("return policy"), limit=5
    )


def test_query_bound_is_the_most_a_phrasing_could_score(index):
    code = text_tokenize("ZX-4410")
    # Only one phrasing holds both tokens, so it reaches the bound: full keyword coverage.
    assert index.search(code, limit=1)[0][2] == pytest.approx(index.query_bound(code))
    # A word no phrasing has still counts in the bound, so the same match covers less of the question.
    assert index.query_bound([*code, "zzzunknown"]) > index.query_bound(code)
    mixed = text_tokenize("return policy ZX-4410")
    assert all(score <= index.query_bound(mixed) + 1e-6 for _, _, score in index.search(mixed, limit=10))
    assert index.query_bound([]) == 0.0


def test_index_survives_a_round_trip_through_plain_arrays(index, tmp_path):
    path = tmp_path / "keyword.npz"
    np.savez(path, **index.arrays())
    with np.load(path) as data:
        assert all(array.dtype != object for array in (data[name] for name in data.files))
        loaded = KeywordIndex.from_arrays(data)
    query = text_tokenize("怎么开发票 return ZX-4410")
    assert loaded.vocabulary == index.vocabulary
    assert loaded.search(query, limit=5) == index.search(query, limit=5)


def test_build_is_deterministic():
    first = keyword_index_from_texts(texts=PHRASINGS, variant_ids=VARIANT_IDS, entry_ids=ENTRY_IDS)
    second = keyword_index_from_texts(texts=PHRASINGS, variant_ids=VARIANT_IDS, entry_ids=ENTRY_IDS)
    for name, array in first.arrays().items():
        assert np.array_equal(array, second.arrays()[name]), name


@pytest.mark.parametrize("texts", [[], ["the", "is it"]])
def test_index_without_any_token_searches_to_nothing(texts):
    ids = np.arange(1, len(texts) + 1)
    index = keyword_index_build(tokens=texts_tokenize(texts), variant_ids=ids, entry_ids=ids)
    assert index.size == len(texts)
    assert index.search(["order"], limit=5) == []


def test_strings_pack_round_trip():
    strings = ["", "order", "信用卡", "with\nnewline", "é"]
    assert strings_unpack(*strings_pack(strings)) == strings
    assert strings_unpack(*strings_pack([])) == []

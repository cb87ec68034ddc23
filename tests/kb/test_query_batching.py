"""Dynamic batching of question embeddings: questions that arrive together share one model call, each
caller gets its own question's vector, and a failing call fails only the questions in it."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from kb.embedders import LanguageRoutedEmbedder, get_embedder
from kb.query_batching import QueryBatcher


class RecordingModel:
    """Encodes a text as [len(text), number of the call]; the first call blocks until released, so that
    the questions sent meanwhile queue up."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, texts):
        with self.lock:
            self.calls.append(list(texts))
            number = len(self.calls)
        if number == 1:
            self.release.wait(10)
        return np.array([[len(text), number] for text in texts], dtype=np.float32)


def test_questions_queued_during_a_call_share_the_next_one_and_get_their_own_vectors():
    model = RecordingModel()
    batcher = QueryBatcher(model, workers=1, max_batch=64)
    try:
        first = batcher.submit("x")
        while not model.calls:
            time.sleep(0.001)
        texts = ["a" * n for n in range(1, 21)]
        futures = [batcher.submit(text) for text in texts]
        model.release.set()
        assert first.result(5).tolist() == [1, 1]
        vectors = [future.result(5) for future in futures]
    finally:
        batcher.close()
    assert [int(v[0]) for v in vectors] == [len(text) for text in texts]
    assert model.calls[1] == texts  # the twenty waiting questions in one call, in order
    assert len(model.calls) == 2
    assert batcher.stats.as_dict() == {"calls": 2, "questions": 21, "mean_batch": 10.5, "largest_batch": 20}


def test_a_batch_never_exceeds_max_batch():
    model = RecordingModel()
    batcher = QueryBatcher(model, workers=1, max_batch=8)
    try:
        batcher.submit("x")
        while not model.calls:
            time.sleep(0.001)
        futures = [batcher.submit(str(n)) for n in range(20)]
        model.release.set()
        for future in futures:
            future.result(5)
    finally:
        batcher.close()
    assert [len(call) for call in model.calls] == [1, 8, 8, 4]


def test_a_failing_call_fails_its_questions_and_the_batcher_keeps_working():
    calls = []

    def model(texts):
        calls.append(list(texts))
        if "boom" in texts:
            raise RuntimeError("model failed")
        return np.ones((len(texts), 2), dtype=np.float32)

    batcher = QueryBatcher(model, workers=1)
    try:
        with pytest.raises(RuntimeError, match="model failed"):
            batcher.encode_query("boom")
        assert batcher.encode_query("fine").tolist() == [1.0, 1.0]
    finally:
        batcher.close()


def test_concurrent_callers_on_two_workers_all_get_the_right_vectors():
    batcher = QueryBatcher(lambda texts: np.array([[float(t)] for t in texts], dtype=np.float32), workers=2)
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda n: batcher.encode_query(str(n))[0], range(500)))
    finally:
        batcher.close()
    assert results == [float(n) for n in range(500)]
    assert batcher.stats.questions == 500


def test_routed_batch_encoding_equals_one_question_at_a_time():
    embedder = get_embedder()
    assert isinstance(embedder, LanguageRoutedEmbedder)
    questions = ["where is my parcel?", "我的银行卡被拒了", "How do I reset my password?", "怎么查物流", "ok"]
    batch = embedder.encode_queries(questions)
    one_by_one = np.vstack([embedder.encode_query(text) for text in questions])
    assert batch.shape == (5, embedder.dimension) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, one_by_one, atol=1e-5)
    # English questions use MiniLM only, Chinese ones USE only.
    english_dim = embedder._english.dimension
    assert np.abs(batch[0, english_dim:]).max() == 0 and np.abs(batch[1, :english_dim]).max() == 0


def test_encoding_and_reading_checks_from_many_threads_at_once_stay_correct():
    # The tokenizer's padding settings are shared state: unguarded, concurrent calls produced ragged,
    # unpadded batches under load.
    embedder = get_embedder()
    questions = ["where is my parcel right now please", "hi", "I need to cancel the order I placed an hour ago"] * 8
    expected = embedder.encode_queries(questions)

    def work(_):
        for _ in range(10):
            np.testing.assert_allclose(embedder.encode_queries(questions), expected, atol=1e-5)
            assert embedder.can_read("some words to tokenize")
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(4)))

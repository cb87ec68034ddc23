"""MiniLM on ONNX Runtime (kb.onnx_encoder): long lists are embedded in bounded session calls, with
the same vectors as one text at a time. One call for 6,000 questions grew past 24 GB."""

import numpy as np

from kb import onnx_encoder
from kb.embedders import SentenceTransformerEmbedder


def test_a_long_list_is_embedded_in_batches_with_the_vectors_of_one_text_at_a_time(monkeypatch):
    embedder = SentenceTransformerEmbedder(runtime="onnx")
    assert embedder.runtime == "onnx"
    texts = [f"how do I {verb} my {thing}?" for verb in ("track", "return", "cancel") for thing in ("order", "card")]
    texts.append("a much longer question about a parcel that was delivered to the wrong address last week")
    alone = np.vstack([embedder.encode([text]) for text in texts])

    encoder = embedder._onnx
    session, calls = encoder._session, []

    class CountingSession:
        def run(self, outputs, feeds):
            calls.append(len(feeds["input_ids"]))
            return session.run(outputs, feeds)

    monkeypatch.setattr(onnx_encoder, "BATCH_SIZE", 3)
    monkeypatch.setattr(encoder, "_session", CountingSession())
    together = embedder.encode(texts)
    assert calls == [3, 3, 1]
    assert together.shape == alone.shape
    assert np.allclose(together, alone, atol=1e-5)


QUESTIONS = ["how do I track my order?", "can I return a gift without the receipt", "my card was declined at the shop"]
PHRASINGS = ["Where is my parcel?", "Returning an item I was given", "Why was my card payment refused?", "Hours"]


def test_questions_run_on_the_8_bit_copy_and_stored_phrasings_stay_at_full_precision(settings, tmp_path):
    settings.VAR_DIR = tmp_path  # a models folder of its own: the 8-bit copy is made here
    settings.KB_QUERY_PRECISION = "float32"
    full = SentenceTransformerEmbedder(runtime="onnx")
    settings.KB_QUERY_PRECISION = "int8"
    eight = SentenceTransformerEmbedder(runtime="onnx")

    # Same model file for phrasings; the 8-bit file only once a question is asked (a worker that
    # only embeds phrasings never makes it), much smaller.
    assert eight._onnx.path == full._onnx.path
    assert np.array_equal(eight.encode(PHRASINGS), full.encode(PHRASINGS))
    assert not eight._onnx.query_path.exists()
    assert np.array_equal(full.encode_queries(QUESTIONS), full.encode(QUESTIONS))

    quantized, exact = eight.encode_queries(QUESTIONS), full.encode_queries(QUESTIONS)
    assert eight._onnx.query_path.name.endswith("-int8-matmul.onnx") and eight._onnx.query_path.exists()
    # Its matrix weights are a quarter of their size (the token embeddings stay full precision).
    assert eight._onnx.query_path.stat().st_size < eight._onnx.path.stat().st_size * 0.7
    agreement = (quantized * exact).sum(axis=1)
    assert not np.array_equal(quantized, exact)
    assert agreement.min() > 0.98, agreement
    assert np.allclose(np.linalg.norm(quantized, axis=1), 1.0, atol=1e-5)
    stored = full.encode(PHRASINGS)
    assert list((quantized @ stored.T).argmax(axis=1)) == list((exact @ stored.T).argmax(axis=1)) == [0, 1, 2]
    # A question's vector does not depend on who else is asking (the 8-bit model scales its
    # activations over the whole call, so questions are not batched into one).
    assert np.array_equal(eight.encode_query(QUESTIONS[1]), quantized[1])
    assert np.array_equal(eight.encode_queries([QUESTIONS[1], "a much longer question " * 8])[0], quantized[1])


def test_an_unknown_query_precision_is_refused_with_its_name(settings):
    settings.KB_QUERY_PRECISION = "int4"
    try:
        SentenceTransformerEmbedder(runtime="onnx")
    except ValueError as error:
        assert "int4" in str(error) and "int8" in str(error)
    else:
        raise AssertionError("int4 was accepted")


def _quantize_in_a_process(source, target):
    onnx_encoder._quantize(source, target)


def test_processes_quantising_at_once_each_leave_a_whole_model(tmp_path):
    """Two Celery workers starting together quantised one file at once and one crashed on the
    other's half-written scratch file ("Wire format was corrupt")."""
    import multiprocessing

    import onnxruntime

    source = SentenceTransformerEmbedder(runtime="onnx")._onnx.path
    context = multiprocessing.get_context("spawn")
    target = tmp_path / "model-int8.onnx"
    processes = [context.Process(target=_quantize_in_a_process, args=(source, target)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [process.exitcode for process in processes] == [0, 0, 0]
    assert [path.name for path in tmp_path.iterdir()] == ["model-int8.onnx"]  # no scratch left
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]

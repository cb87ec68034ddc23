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

"""A sentence-transformers model run by ONNX Runtime instead of PyTorch, with the same vectors.

Measured here (2 cores, one thread, all-MiniLM-L6-v2): one question 9.8 ms against 21.9 ms in
PyTorch, a batch of 15 100 ms against 173 ms, largest difference between the two 2e-7. Just as
important for a web process: ``InferenceSession.run`` is one C call that releases the GIL for its
whole length, where a PyTorch forward takes the GIL back around each of its ~100 kernels and stalls
behind every other thread's Python work (a convoy: 100+ ms per question under load).

The ONNX file is exported from the loaded PyTorch model once and kept under the data directory
(keyed by the model's own files), so nothing is downloaded and a new model version exports again.

Questions can run on an 8-bit copy of the model (dynamic quantisation of its matrix products, per
channel), made from that file once: measured here on BANKING77's 3,080 test questions one at a
time, 2.4 ms against 5.4 ms a question, cosine to the full-precision vector 0.994 on average, top-1
against full-precision stored phrasings 91.95% against 92.05% (15 questions lost, 12 gained,
McNemar p = 0.70). Stored phrasings are always embedded at full precision, so switching it does not
touch the index.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Texts per session call (sentence-transformers' default batch size).
BATCH_SIZE = 64
QUERY_PRECISIONS = ("int8", "float32")
# Names the 8-bit file together with the model's fingerprint: a file made by another recipe (the
# first try quantised the token embeddings too) is never picked up as this one.
QUANTIZATION_RECIPE = "int8-matmul"


class OnnxUnsupported(RuntimeError):
    """The model's modules are not the Transformer -> mean Pooling (-> Normalize) this runs."""


def _model_fingerprint(model_path: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(model_path.rglob("*")):
        if path.is_file() and path.suffix in {".json", ".safetensors", ".bin", ".txt"}:
            stat = path.stat()
            digest.update(f"{path.relative_to(model_path)}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:16]


def _export(model, path: Path) -> None:
    """Export the model's transformer to ONNX at ``path`` (temp file + rename: processes starting
    together may export at once, and no reader ever sees a partial file)."""
    import torch

    transformer = model[0].auto_model.eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    example = model.tokenizer(["an example question"], return_tensors="pt")
    dynamic = {name: {0: "batch", 1: "tokens"} for name in INPUTS}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LastHiddenState(transformer),
                tuple(example[name] for name in INPUTS),
                tmp_name,
                input_names=list(INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes={**dynamic, "last_hidden_state": {0: "batch", 1: "tokens"}},
                opset_version=17,
                dynamo=False,
            )
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _quantize(source: Path, path: Path) -> None:
    """Write an 8-bit copy of ``source`` at ``path``, made in a private folder and renamed into
    place: the quantiser writes a shape-inferred copy beside its input under a fixed name, so two
    processes quantising one file at once corrupted each other's (seen with two Celery workers)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as private:
        private_source = Path(private) / source.name
        private_source.symlink_to(source.resolve())
        made = Path(private) / path.name
        # The quantiser reports every tensor it visits on the root logger (hundreds of lines) and
        # advises a pre-processing pass, which measured no faster here.
        with _root_logging_quiet():
            quantize_dynamic(
                str(private_source),
                str(made),
                weight_type=QuantType.QInt8,
                per_channel=True,
                # Matrix products only: quantising the token embeddings too (the default) cost
                # 0.5 points of BANKING77 top-1 (McNemar p = 0.008); without them, 0.1 (p = 0.7).
                op_types_to_quantize=["MatMul"],
            )
        os.replace(made, path)


@contextlib.contextmanager
def _root_logging_quiet():
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _session_open(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxSentenceEncoder:
    """Encodes like ``SentenceTransformer.encode(..., normalize_embeddings=True)`` for a model made of
    a Transformer, mean Pooling and optionally Normalize."""

    def __init__(self, model, model_path: Path, cache_dir: Path, *, threads: int = 1, query_precision: str = "float32"):
        """``query_precision``: "int8" runs :meth:`encode_queries` on the 8-bit copy, "float32" on
        the exported model itself."""
        if query_precision not in QUERY_PRECISIONS:
            raise ValueError(f"query precision must be one of {QUERY_PRECISIONS}, not {query_precision!r}")
        names = [type(module).__name__ for module in model]
        pooling = model[1] if len(names) > 1 else None
        if names[:2] != ["Transformer", "Pooling"] or set(names[2:]) - {"Normalize"}:
            raise OnnxUnsupported(f"modules {names}")
        if getattr(pooling, "pooling_mode", "mean") != "mean" or not getattr(pooling, "pooling_mode_mean_tokens", True):
            raise OnnxUnsupported("pooling is not mean pooling")
        if getattr(model[0], "do_lower_case", False):
            raise OnnxUnsupported("the transformer lower-cases its input itself")
        # A fast tokenizer keeps its padding and truncation settings in shared state that every call
        # rewrites: two threads on one instance get each other's settings (ragged, unpadded batches
        # were seen under load). This encoder has its own copy, used by one thread at a time.
        self._tokenizer = copy.deepcopy(model.tokenizer)
        self._tokenizer_lock = threading.Lock()
        self._max_length = int(model.max_seq_length or 512)
        self.path = cache_dir / f"{model_path.name}-{_model_fingerprint(model_path)}.onnx"
        if not self.path.exists():
            logger.info("exporting %s to ONNX at %s (once)", model_path.name, self.path)
            _export(model, self.path)
        self.query_path = self.path
        if query_precision == "int8":
            self.query_path = self.path.with_name(f"{self.path.stem}-{QUANTIZATION_RECIPE}.onnx")
        self.query_precision = query_precision
        self._lock = threading.Lock()
        self._session = None
        # Made on the first question (a Celery worker only embeds phrasings and never needs it).
        self._query_session = None
        self.threads_set(threads)

    def threads_set(self, threads: int) -> None:
        """Use ``threads`` math threads per call (new sessions; the model files are shared)."""
        session = _session_open(self.path, threads)
        query_session = None
        if self.query_path == self.path:
            query_session = session
        elif self._query_session is not None:
            query_session = _session_open(self.query_path, threads)
        with self._lock:
            self._session = session
            self._query_session = query_session
            self.threads = threads

    def _query_session_get(self):
        session = self._query_session
        if session is not None:
            return session
        with self._lock:
            if self._query_session is None:
                if not self.query_path.exists():
                    logger.info("quantising %s to 8 bits at %s (once)", self.path.name, self.query_path)
                    _quantize(self.path, self.query_path)
                self._query_session = _session_open(self.query_path, self.threads)
            return self._query_session

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length mean-pooled vectors, one row per text, in session calls of up to
        BATCH_SIZE texts (as sentence-transformers batches): activations grow with batch x length
        squared, and one call for 6,000 questions took 24 GB before it was killed."""
        texts = list(texts)
        if len(texts) <= BATCH_SIZE:
            return self._encode_batch(texts)
        return np.concatenate(
            [self._encode_batch(texts[at : at + BATCH_SIZE]) for at in range(0, len(texts), BATCH_SIZE)]
        )

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Like :meth:`encode`, on the model of the query precision (questions, not phrasings).

        The 8-bit model quantises its activations with one scale per call, taken over every token
        of every text in it: batched, a customer's vector would depend on the other customers'
        questions and their padding. So it embeds each question alone (2.7 ms here; batching saved
        ~0.2 ms a question), and a question gets the same vector whoever else is asking."""
        if self.query_path == self.path:
            return self.encode(texts)
        return np.concatenate([self._encode_batch([text], query=True) for text in texts])

    def _encode_batch(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        with self._tokenizer_lock:
            batch = self._tokenizer(
                list(texts), padding=True, truncation=True, max_length=self._max_length, return_tensors="np"
            )
        feeds = {name: batch[name].astype(np.int64) for name in INPUTS if name in batch}
        if "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        hidden = (self._query_session_get() if query else self._session).run(None, feeds)[0]
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(pooled, dtype=np.float32)

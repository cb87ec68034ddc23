"""A sentence-transformers model run by ONNX Runtime instead of PyTorch, with the same vectors.

Measured here (2 cores, one thread, all-MiniLM-L6-v2): one question 9.8 ms against 21.9 ms in
PyTorch, a batch of 15 100 ms against 173 ms, largest difference between the two 2e-7. Just as
important for a web process: ``InferenceSession.run`` is one C call that releases the GIL for its
whole length, where a PyTorch forward takes the GIL back around each of its ~100 kernels and stalls
behind every other thread's Python work (a convoy: 100+ ms per question under load).

The ONNX file is exported from the loaded PyTorch model once and kept under the data directory
(keyed by the model's own files), so nothing is downloaded and a new model version exports again.
"""

from __future__ import annotations

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


class OnnxSentenceEncoder:
    """Encodes like ``SentenceTransformer.encode(..., normalize_embeddings=True)`` for a model made of
    a Transformer, mean Pooling and optionally Normalize."""

    def __init__(self, model, model_path: Path, cache_dir: Path, *, threads: int = 1):
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
        self._lock = threading.Lock()
        self._session = None
        self.threads_set(threads)

    def threads_set(self, threads: int) -> None:
        """Use ``threads`` math threads per call (a new session; the model file is shared)."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        with self._lock:
            self._session = session
            self.threads = threads

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

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        with self._tokenizer_lock:
            batch = self._tokenizer(
                list(texts), padding=True, truncation=True, max_length=self._max_length, return_tensors="np"
            )
        feeds = {name: batch[name].astype(np.int64) for name in INPUTS if name in batch}
        if "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        hidden = self._session.run(None, feeds)[0]
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(pooled, dtype=np.float32)

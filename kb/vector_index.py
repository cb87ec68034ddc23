"""FAISS index files: building, atomic writing, loading, and the per-process current version.

One file per published version holds the serialized index (ids are variant ids) and the
variant -> entry mapping, so a web process can swap versions with a single reference assignment.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedIndex:
    """An index version held in memory by a web process."""

    version: int
    index: faiss.Index
    entry_by_variant: dict[int, int]

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, int, float]]:
        """Top variants for one unit-length query vector as (variant_id, entry_id, score)."""
        if self.index.ntotal == 0:
            return []
        scores, ids = self.index.search(query.reshape(1, -1).astype(np.float32), min(k, self.index.ntotal))
        return [
            (int(variant_id), self.entry_by_variant[int(variant_id)], float(score))
            for score, variant_id in zip(scores[0], ids[0], strict=False)
            if variant_id != -1
        ]


def choose_index_kind(*, configured: str, vector_count: int, hnsw_threshold: int) -> str:
    """'flat' (exact) or 'hnsw' (approximate): as configured, or by size when 'auto'."""
    if configured not in {"auto", "flat", "hnsw"}:
        raise ValueError(f"KB_INDEX_TYPE must be auto, flat or hnsw, not {configured!r}")
    if configured != "auto":
        return configured
    return "hnsw" if vector_count >= hnsw_threshold else "flat"


def build_index(
    vectors: np.ndarray, variant_ids: np.ndarray, dimension: int, *, kind: str = "flat", hnsw_m: int = 32
) -> faiss.Index:
    """Inner-product index over unit vectors (cosine), addressed by variant id.

    Flat search is exact and fast enough for tens of thousands of phrasings; HNSW keeps search
    sub-millisecond for millions at a small recall cost."""
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dimension, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = 80
        inner.hnsw.efSearch = 64
    else:
        inner = faiss.IndexFlatIP(dimension)
    index = faiss.IndexIDMap2(inner)
    if len(variant_ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), variant_ids.astype(np.int64))
    return index


def write_index_file(path: Path, index: faiss.Index, variant_ids: np.ndarray, entry_ids: np.ndarray) -> None:
    """Write atomically: readers see the old file or the complete new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, index=faiss.serialize_index(index), variant_ids=variant_ids, entry_ids=entry_ids)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_index_file(path: Path, version: int) -> LoadedIndex:
    """Load a file written by :func:`write_index_file`."""
    with np.load(path) as data:
        index = faiss.deserialize_index(data["index"])
        mapping = dict(zip(data["variant_ids"].tolist(), data["entry_ids"].tolist(), strict=False))
    return LoadedIndex(version=version, index=index, entry_by_variant=mapping)


class CurrentIndex:
    """The index version this process serves; re-checks the published version at most every
    ``poll_seconds`` and swaps in a newer one without blocking searches on the old one."""

    def __init__(self, *, latest_version, poll_seconds):
        self._latest_version = latest_version  # () -> (version, path) | None
        self._poll_seconds = poll_seconds  # () -> float
        self._loaded: LoadedIndex | None = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def get(self) -> LoadedIndex | None:
        """The newest published index, loading it if this process has not yet."""
        if time.monotonic() - self._checked_at >= self._poll_seconds():
            self.refresh()
        return self._loaded

    def refresh(self) -> None:
        """Look up the published version now and load it if it is newer than ours."""
        with self._lock:
            latest = self._latest_version()
            self._checked_at = time.monotonic()
            if latest is None:
                self._loaded = None
                return
            version, path = latest
            if self._loaded is None or self._loaded.version != version:
                try:
                    self._loaded = read_index_file(path, version)
                except (OSError, ValueError, KeyError, RuntimeError):
                    # Keep answering from the version we have; the next poll tries again.
                    logger.exception("could not load index v%s from %s", version, path)

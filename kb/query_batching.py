"""Dynamic batching of query embeddings, as inference servers do (Hugging Face TEI, Triton).

A web process answers many sockets at once. Each answer embeds one question, and one model call per
question wastes most of the model's throughput (MiniLM on 2 cores: ~65 sentences/s one at a time,
~290/s batched). Callers in any thread hand their question to :meth:`QueryBatcher.encode_query`
and block; ``workers`` threads (one per core) each take every question waiting at that moment, up
to ``max_batch``, and embed them in one call. Under light load a question is embedded at once,
alone; under heavy load questions that arrive while a call runs share the next one. ``max_wait``
optionally holds a lone question a few milliseconds for company. With questions on the 8-bit
MiniLM (settings.KB_QUERY_PRECISION, the default) the model itself takes a batch's English questions
one at a time (kb.onnx_encoder says why); the batch still shares one trip to a batch thread, and
the multilingual model's questions still share one call.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class BatchStats:
    """Counters for the metrics endpoint and the benchmarks."""

    calls: int = 0
    questions: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def record(self, size: int) -> None:
        self.calls += 1
        self.questions += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1

    def as_dict(self) -> dict:
        return {
            "calls": self.calls,
            "questions": self.questions,
            "mean_batch": round(self.questions / self.calls, 2) if self.calls else 0.0,
            "largest_batch": self.largest,
        }


class QueryBatcher:
    """Embeds questions from many threads in shared model calls (see the module docstring)."""

    def __init__(
        self,
        encode_many: Callable[[Sequence[str]], np.ndarray],
        *,
        workers: int = 2,
        max_batch: int = 32,
        max_wait: float = 0.0,
        name: str = "query-batcher",
    ):
        self._encode_many = encode_many
        self._queue: queue.SimpleQueue[tuple[str, Future] | None] = queue.SimpleQueue()
        self._max_batch = max(1, max_batch)
        self._max_wait = max(0.0, max_wait)
        self._stats_lock = threading.Lock()
        self.stats = BatchStats()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(max(1, workers))
        ]
        self._closed = False
        for thread in self._threads:
            thread.start()

    def encode_query(
        self, text: str, timeout: float | None = 30.0, encode_many: Callable[[Sequence[str]], np.ndarray] | None = None
    ) -> np.ndarray:
        """The question's vector, as ``encode_many([text])[0]`` would give it (the batcher's own
        ``encode_many`` unless one is given: questions for different models share no call)."""
        return self.submit(text, encode_many).result(timeout=timeout)

    def submit(self, text: str, encode_many: Callable[[Sequence[str]], np.ndarray] | None = None) -> Future:
        """Queue a question; the future resolves to its vector (or the model's exception)."""
        if self._closed:
            raise RuntimeError("the query batcher is closed")
        future: Future = Future()
        self._queue.put((text, future, encode_many or self._encode_many))
        return future

    def close(self) -> None:
        """Stop the worker threads once the questions already queued are done."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=10)

    def _take_batch(self, first: tuple) -> tuple[list[tuple], bool]:
        """``first`` and whatever else is queued (waiting up to max_wait for more); and whether a
        stop marker was taken."""
        batch = [first]
        deadline = time.monotonic() + self._max_wait
        while len(batch) < self._max_batch:
            try:
                remaining = deadline - time.monotonic()
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._take_batch(first)
            live = [item for item in batch if item[1].set_running_or_notify_cancel()]
            # Nearly always one model; during a switch of model versions, one call per model.
            for encode_many in dict.fromkeys(item[2] for item in live):
                self._run([(text, future) for text, future, encoder in live if encoder is encode_many], encode_many)
            if stop:
                return

    def _run(self, batch: list[tuple[str, Future]], encode_many: Callable[[Sequence[str]], np.ndarray]) -> None:
        try:
            vectors = encode_many([text for text, _ in batch])
        except BaseException as error:  # noqa: BLE001 - every waiting caller gets the error, the thread lives on
            logger.exception("embedding a batch of %d questions failed", len(batch))
            for _, future in batch:
                future.set_exception(error)
            return
        with self._stats_lock:
            self.stats.record(len(batch))
        for (_, future), vector in zip(batch, vectors, strict=True):
            future.set_result(vector)


_batcher: QueryBatcher | None = None


def _encode_many(texts: Sequence[str], embedder=None) -> np.ndarray:
    from kb.embedders import get_embedder

    embedder = embedder or get_embedder()
    encode_queries = getattr(embedder, "encode_queries", None)
    if encode_queries is not None:
        return encode_queries(list(texts))
    # A plugged-in embedder without a batch method still works, one question at a time.
    return np.vstack([embedder.encode_query(text) for text in texts])


def query_batching_start(*, workers: int, max_batch: int, max_wait: float) -> QueryBatcher:
    """From now on :func:`query_encode` batches concurrent questions of this process (web servers)."""
    global _batcher
    if _batcher is None:
        _batcher = QueryBatcher(_encode_many, workers=workers, max_batch=max_batch, max_wait=max_wait)
    return _batcher


def query_batching_stats() -> dict | None:
    """The batcher's counters, or None where questions are embedded one at a time."""
    return None if _batcher is None else _batcher.stats.as_dict()


def query_encode(text: str, embedder=None) -> np.ndarray:
    """One question's vector, by ``embedder`` (default: this process's): through the batcher in a
    web process, else directly (commands, hit testing in tests, benchmarks that call the pipeline in
    a loop)."""
    if _batcher is not None:
        if embedder is None:
            return _batcher.encode_query(text)
        return _batcher.encode_query(text, encode_many=_embedder_encode_many(embedder))
    from kb.embedders import get_embedder

    return (embedder or get_embedder()).encode_query(text)


_encoders: dict[int, tuple[object, Callable[[Sequence[str]], np.ndarray]]] = {}


def _embedder_encode_many(embedder) -> Callable[[Sequence[str]], np.ndarray]:
    """One function per embedder, the same each time, so the batcher puts its questions together."""
    known = _encoders.get(id(embedder))
    if known is None or known[0] is not embedder:
        known = (embedder, functools.partial(_encode_many, embedder=embedder))
        _encoders[id(embedder)] = known
    return known[1]

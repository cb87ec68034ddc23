"""The index a web process serves is loaded in the background: a customer's request never reads the
database or an index file, and a newer version is swapped in whole."""

import threading
import time

import numpy as np

from kb.vector_index import CurrentIndex, build_index, write_index_file


def index_file(path, vectors):
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    write_index_file(path, build_index(vectors, ids, vectors.shape[1]), ids, ids * 10)
    return path


def test_a_background_loader_swaps_in_new_versions_and_get_never_loads(tmp_path):
    first = index_file(tmp_path / "v1.npz", np.eye(4, dtype=np.float32))
    second = index_file(tmp_path / "v2.npz", np.eye(4, dtype=np.float32)[:2])
    published = {"latest": (1, first)}
    callers = []

    def latest_version():
        callers.append(threading.current_thread().name)
        return published["latest"]

    after_polls = []
    current = CurrentIndex(latest_version=latest_version, poll_seconds=lambda: 0.01)
    assert current.get().version == 1  # no loader yet: get() checks itself
    assert callers == ["MainThread"]
    current.start_background(after_poll=lambda: after_polls.append(1))
    assert current.background
    callers.clear()
    published["latest"] = (2, second)
    deadline = time.monotonic() + 5
    while current.get().version != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    loaded = current.get()
    assert (loaded.version, loaded.index.ntotal) == (2, 2)
    assert set(callers) == {"index-loader"} and after_polls


def test_a_version_that_cannot_be_loaded_keeps_the_current_one(tmp_path):
    good = index_file(tmp_path / "v1.npz", np.eye(3, dtype=np.float32))
    broken = tmp_path / "v2.npz"
    broken.write_bytes(b"not an index")
    published = {"latest": (1, good)}
    current = CurrentIndex(latest_version=lambda: published["latest"], poll_seconds=lambda: 0)
    assert current.get().version == 1
    published["latest"] = (2, broken)
    assert current.get().version == 1

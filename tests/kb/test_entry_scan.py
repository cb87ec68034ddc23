"""Dense candidates of a flat index come from one scan of every phrasing (kb.vector_index.EntryScan);
they must be exactly what a deep top-k phrasing search finds: the same entries, in the same order,
each by the same best phrasing and score."""

import numpy as np
import pytest

from kb.vector_index import LoadedIndex, _entries_covering, build_index, read_index_file, write_index_file


def clustered_index(seed: int, *, entries: int = 30, per_entry: int = 40, dimension: int = 32, kind: str = "flat"):
    """Entries with many close phrasings each (as BANKING77's), in shuffled order, and queries near
    some of them."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(entries, dimension)).astype(np.float32)
    vectors = np.repeat(centers, per_entry, axis=0) + 0.7 * rng.normal(size=(entries * per_entry, dimension))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    variant_ids = np.arange(1000, 1000 + entries * per_entry)
    entry_ids = np.repeat(np.arange(1, entries + 1) * 7, per_entry)
    shuffle = rng.permutation(len(variant_ids))
    vectors, variant_ids, entry_ids = vectors[shuffle], variant_ids[shuffle], entry_ids[shuffle]
    index = LoadedIndex.create(
        version=1,
        index=build_index(vectors, variant_ids, dimension, kind=kind),
        variant_ids=variant_ids,
        entry_ids=entry_ids,
    )
    queries = centers[rng.integers(0, entries, size=20)] + 0.9 * rng.normal(size=(20, dimension))
    return index, (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def deep_search(index: LoadedIndex, query: np.ndarray, entries: int):
    return _entries_covering(lambda limit: index.search(query, limit), entries=entries, total=index.index.ntotal)


@pytest.mark.parametrize("seed", range(5))
def test_the_scan_finds_what_a_deep_phrasing_search_finds(seed):
    index, queries = clustered_index(seed)
    assert index.scan is not None
    for query in queries:
        for entries in (1, 5, 20, 30):
            scanned = index.dense_candidates(query, entries=entries)
            searched = deep_search(index, query, len(scanned))[: len(scanned)]
            assert len(scanned) >= min(entries, 30)
            assert [hit[:2] for hit in scanned] == [hit[:2] for hit in searched]
            assert np.allclose([hit[2] for hit in scanned], [hit[2] for hit in searched], atol=1e-5)


def test_an_index_read_from_its_file_scans_and_an_approximate_one_searches(tmp_path):
    index, queries = clustered_index(11)
    path = tmp_path / "v1.npz"
    variant_ids = np.array(list(index.entry_by_variant))
    write_index_file(path, index.index, variant_ids, np.array([index.entry_by_variant[v] for v in variant_ids]))
    loaded = read_index_file(path, 1)
    assert loaded.scan is not None
    assert loaded.dense_candidates(queries[0], entries=5) == index.dense_candidates(queries[0], entries=5)
    # HNSW is approximate: no exact scan, the phrasing search as before.
    hnsw, _ = clustered_index(11, kind="hnsw")
    assert hnsw.scan is None
    assert len({hit[1] for hit in hnsw.dense_candidates(queries[0], entries=5)}) >= 5


def test_an_empty_index_has_no_candidates():
    empty = LoadedIndex.create(
        version=1,
        index=build_index(np.zeros((0, 8), np.float32), np.zeros(0, np.int64), 8),
        variant_ids=[],
        entry_ids=[],
    )
    assert empty.dense_candidates(np.ones(8, np.float32) / np.sqrt(8), entries=5) == []

"""FAISS wrappers: exact vs approximate agreement, deletes for every kind."""
from __future__ import annotations

import numpy as np

from faec_rec.config import GalleryConfig
from faec_rec.index.vectors import FlatIndex, HnswIndex, build_index


def clustered(rng: np.random.Generator, ids: int, per: int, noise: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``ids`` random centres (like face embeddings): (ids*per, 128), centres."""
    centres = rng.normal(size=(ids, 128)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, per, axis=0) + noise * rng.normal(size=(ids * per, 128)).astype(np.float32) / np.sqrt(128)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), centres


def test_exact_and_approximate_agree(rng: np.random.Generator) -> None:
    x, centres = clustered(rng, 1000, 5)
    queries = centres[rng.integers(0, 1000, 300)] + 0.35 * rng.normal(size=(300, 128)).astype(np.float32) / np.sqrt(128)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    labels = np.arange(len(x), dtype=np.int64) + 10
    flat = build_index(x, labels, GalleryConfig(), kind="flat")
    hnsw = build_index(x, labels, GalleryConfig(), kind="hnsw")
    assert isinstance(flat, FlatIndex) and isinstance(hnsw, HnswIndex)
    _, exact = flat.search(queries, 1)
    _, approx = hnsw.search(queries, 1)
    assert np.mean(exact[:, 0] == approx[:, 0]) >= 0.99
    # Brute force in numpy agrees with the flat index.
    brute = labels[np.argmax(queries @ x.T, axis=1)]
    np.testing.assert_array_equal(brute, exact[:, 0])


def test_build_index_picks_kind_by_size(rng: np.random.Generator) -> None:
    x, _ = clustered(rng, 20, 3)
    labels = np.arange(60, dtype=np.int64)
    assert build_index(x, labels, GalleryConfig(hnsw_above=100)).kind == "flat"
    assert build_index(x, labels, GalleryConfig(hnsw_above=50)).kind == "hnsw"


def test_removal_for_every_kind(rng: np.random.Generator) -> None:
    x, _ = clustered(rng, 50, 4)
    labels = np.arange(len(x), dtype=np.int64)
    for kind in ("flat", "hnsw"):
        index = build_index(x, labels, GalleryConfig(), kind=kind)
        gone = labels[:40]
        index.remove(gone)
        assert len(index) == len(x) - 40
        _, found = index.search(x[:40], 5)
        assert not np.isin(found, gone).any(), kind
        _, self_hit = index.search(x[40:60], 1)
        np.testing.assert_array_equal(self_hit[:, 0], labels[40:60])


def test_hnsw_tombstones_ask_for_rebuild_and_survive_serialisation(rng: np.random.Generator) -> None:
    x, _ = clustered(rng, 50, 4)
    labels = np.arange(len(x), dtype=np.int64) * 3
    index = HnswIndex(128)
    index.add(x, labels)
    index.remove(labels[:5])
    assert not index.needs_rebuild()
    index.remove(labels[5:30])
    assert index.needs_rebuild()
    again = HnswIndex.from_arrays(index.to_arrays(), ef_search=64)
    assert len(again) == len(index)
    np.testing.assert_array_equal(again.search(x[30:50], 3)[1], index.search(x[30:50], 3)[1])


def test_empty_index_returns_no_labels() -> None:
    for index in (FlatIndex(128), HnswIndex(128)):
        scores, labels = index.search(np.ones((2, 128), np.float32) / np.sqrt(128), 3)
        assert (labels == -1).all() and labels.shape == (2, 3)

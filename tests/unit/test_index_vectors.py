"""FAISS wrappers: exact vs approximate agreement, deletes for every kind."""
from __future__ import annotations

import numpy as np
import pytest

from faec_rec.config import GalleryConfig
from faec_rec.errors import VectorError
from faec_rec.index.vectors import FlatIndex, HnswIndex, IvfIndex, build_index, ivf_lists, ivf_subquantizers


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
    ivf = build_index(x, labels, GalleryConfig(ivf_nprobe=12), kind="ivf")  # 128 lists here
    assert isinstance(flat, FlatIndex) and isinstance(hnsw, HnswIndex) and isinstance(ivf, IvfIndex)
    assert ivf.nlist == 128
    exact_scores, exact = flat.search(queries, 1)
    for approx_index in (hnsw, ivf):
        scores, approx = approx_index.search(queries, 1)
        assert np.mean(exact[:, 0] == approx[:, 0]) >= 0.99, approx_index.kind
    # IVF re-scores its candidates exactly: where it agrees, the scores are flat's.
    same = exact[:, 0] == approx[:, 0]
    np.testing.assert_allclose(scores[same, 0], exact_scores[same, 0], rtol=0, atol=1e-5)
    # Brute force in numpy agrees with the flat index.
    brute = labels[np.argmax(queries @ x.T, axis=1)]
    np.testing.assert_array_equal(brute, exact[:, 0])


def test_build_index_picks_kind_by_size(rng: np.random.Generator) -> None:
    x, _ = clustered(rng, 20, 3)
    labels = np.arange(60, dtype=np.int64)
    assert build_index(x, labels, GalleryConfig(hnsw_above=100)).kind == "flat"
    assert build_index(x, labels, GalleryConfig(hnsw_above=50)).kind == "ivf"  # the default approximate kind
    assert build_index(x, labels, GalleryConfig(hnsw_above=50, approximate="hnsw")).kind == "hnsw"


def test_removal_for_every_kind(rng: np.random.Generator) -> None:
    x, _ = clustered(rng, 50, 4)
    labels = np.arange(len(x), dtype=np.int64)
    for kind in ("flat", "hnsw", "ivf"):
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
    for index in (FlatIndex(128), HnswIndex(128), IvfIndex(128)):
        scores, labels = index.search(np.ones((2, 128), np.float32) / np.sqrt(128), 3)
        assert (labels == -1).all() and labels.shape == (2, 3)


def test_ivf_deletes_really_remove_and_survive_serialisation(rng: np.random.Generator) -> None:
    x, _ = clustered(rng, 200, 5)
    labels = np.arange(len(x), dtype=np.int64) * 7 + 1
    index = IvfIndex(128, nprobe=64)
    index.add(x, labels)
    inner = index._index
    assert inner is not None and inner.ntotal == len(x)
    index.remove(labels[:100])
    index.remove(labels[:3])  # already gone: ignored
    assert len(index) == inner.ntotal == len(x) - 100  # gone from the FAISS lists, not tombstoned
    assert not index._rows[:100].any()  # the float copy of removed rows is wiped
    _, found = index.search(x[:100], 10)
    assert not np.isin(found, labels[:100]).any()
    index.add(x[:5], np.array([-5, -4, -3, -2, -1], np.int64))  # re-added under new labels
    _, back = index.search(x[:5], 1)
    np.testing.assert_array_equal(back[:, 0], [-5, -4, -3, -2, -1])
    by_label = np.zeros((int(labels.max()) + 1, 128), np.float32)
    by_label[labels[100:]] = x[100:]
    index.remove(np.array([-5, -4, -3, -2, -1], np.int64))
    again = IvfIndex.from_arrays(index.to_arrays(), by_label, nprobe=64, refine=4)
    assert len(again) == len(index) and again.trained_on == index.trained_on
    np.testing.assert_array_equal(again.search(x[100:150], 3)[1], index.search(x[100:150], 3)[1])


def test_ivf_asks_for_retraining_after_growing(rng: np.random.Generator) -> None:
    x, _ = clustered(rng, 100, 5)
    index = IvfIndex(128)
    index.add(x[:100], np.arange(100))
    assert index.trained_on == 100 and not index.needs_rebuild()
    index.add(x[100:400], np.arange(100, 400))
    assert not index.needs_rebuild()  # 4x its training size
    index.add(x[400:401], np.array([400]))
    assert index.needs_rebuild()


def test_ivf_lists_follow_the_size() -> None:
    assert ivf_lists(1_000_000) == 2000
    assert ivf_lists(1_000_000, requested=4096) == 4096
    assert ivf_lists(1000) == 25  # never under 39 training vectors per list
    assert ivf_lists(10) == 1


def test_ivf_wide_search_returns_as_many_as_asked(rng: np.random.Generator) -> None:
    x, _ = clustered(rng, 400, 5)
    index = IvfIndex(128, nprobe=1)
    index.add(x, np.arange(len(x)))
    _, found = index.search(x[:2], 500)  # more than one list holds: probes more lists
    assert (found >= 0).all() and len(set(found[0].tolist())) == 500


def test_ivf_codes_use_one_subquantiser_per_four_dimensions() -> None:
    assert ivf_subquantizers(128) == 32
    assert ivf_subquantizers(6) == 3  # not a multiple of 4: one per 2
    with pytest.raises(VectorError, match="even vector size"):
        ivf_subquantizers(7)

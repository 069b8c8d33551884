"""FAISS replicas of L2-normalised vectors searched by inner product (= cosine).

Two index kinds behind one small interface, addressed by caller-chosen int64
labels:

* ``FlatIndex`` — exact search (``IndexIDMap2`` over ``IndexFlatIP``); removed
  vectors are really deleted from memory.
* ``HnswIndex`` — approximate search (``IndexHNSWFlat``). Measured on 1M
  clustered face-like vectors on the 2-core box (``benchmarks/gallery.py``,
  M=32, efConstruction=200): efSearch 128 → 1.07 ms, recall@1 0.971 (right
  identity 0.985); 192 → 1.53 ms, 0.985 (0.998); 384 → 3.0 ms, 0.989
  (0.999). The default is 192. HNSW cannot remove ids, so removal marks a
  tombstone that searches skip (an ``IDSelectorBitmap`` of live positions);
  :meth:`HnswIndex.needs_rebuild` says when tombstones pass
  ``TOMBSTONE_REBUILD_FRACTION`` and the owner rebuilds from live vectors.

:func:`build_index` picks the kind from the live count and the configuration.
"""
from __future__ import annotations

from typing import Protocol

import faiss
import numpy as np

from faec_rec.config import GalleryConfig
from faec_rec.errors import VectorError

TOMBSTONE_REBUILD_FRACTION = 0.10


class VectorIndex(Protocol):
    """What the replica needs from an index."""

    kind: str

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None: ...

    def remove(self, labels: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def needs_rebuild(self) -> bool: ...

    def __len__(self) -> int: ...


def _labels(labels: np.ndarray | list[int]) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(labels, dtype=np.int64).reshape(-1))


class FlatIndex:
    """Exact inner-product search with real deletes."""

    kind = "flat"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Add ``(n, dim) float32`` unit rows under ``(n,) int64`` labels."""
        labels = _labels(labels)
        if len(labels):
            self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), labels)

    def remove(self, labels: np.ndarray) -> None:
        """Delete the vectors with these labels (unknown labels are ignored)."""
        labels = _labels(labels)
        if len(labels):
            self._index.remove_ids(labels)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product: ``(n, k) float32`` scores, ``(n, k) int64`` labels (-1 = none)."""
        k = max(1, int(k))
        if self._index.ntotal == 0:
            n = len(queries)
            return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
        return self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def needs_rebuild(self) -> bool:
        return False

    def __len__(self) -> int:
        return int(self._index.ntotal)


class HnswIndex:
    """Approximate inner-product search; removal by tombstone (see module docstring)."""

    kind = "hnsw"

    def __init__(self, dim: int, m: int = 32, ef_construction: int = 200, ef_search: int = 128) -> None:
        self.dim = dim
        self.ef_search = ef_search
        self._index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = ef_construction
        self._index.hnsw.efSearch = ef_search
        self._pos_label = np.empty(0, np.int64)  # FAISS position -> caller's label
        self._alive = np.empty(0, bool)
        self._label_pos: dict[int, int] = {}
        self._dead = 0

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Add ``(n, dim) float32`` unit rows under ``(n,) int64`` labels."""
        labels = _labels(labels)
        if not len(labels):
            return
        start = self._index.ntotal
        self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self._pos_label = np.concatenate([self._pos_label, labels])
        self._alive = np.concatenate([self._alive, np.ones(len(labels), bool)])
        for i, label in enumerate(labels.tolist()):
            self._label_pos[label] = start + i

    def remove(self, labels: np.ndarray) -> None:
        """Tombstone these labels; later searches never return them."""
        for label in _labels(labels).tolist():
            pos = self._label_pos.pop(label, None)
            if pos is not None:
                self._alive[pos] = False
                self._dead += 1

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product: ``(n, k) float32`` scores, ``(n, k) int64`` labels (-1 = none)."""
        k = max(1, int(k))
        n = len(queries)
        if len(self) == 0:
            return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self._dead:
            bitmap = np.packbits(self._alive, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(self._alive), faiss.swig_ptr(bitmap))
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.ef_search, k))
            scores, pos = self._index.search(queries, k, params=params)
            del selector, bitmap  # kept alive until the search returned
        else:
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
            scores, pos = self._index.search(queries, k, params=params)
        labels = np.where(pos >= 0, self._pos_label[np.maximum(pos, 0)], -1)
        return scores, labels

    def needs_rebuild(self) -> bool:
        """True once tombstones exceed ``TOMBSTONE_REBUILD_FRACTION`` of the stored vectors."""
        return self._dead > TOMBSTONE_REBUILD_FRACTION * max(1, self._index.ntotal)

    def __len__(self) -> int:
        return int(self._index.ntotal) - self._dead

    # ---- persistence: the graph is expensive to build, so snapshots keep it --
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The index as plain arrays (FAISS bytes, position labels, live mask)."""
        return {
            "hnsw_bytes": faiss.serialize_index(self._index),
            "hnsw_pos_label": self._pos_label,
            "hnsw_alive": self._alive,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], ef_search: int) -> HnswIndex:
        """Inverse of :meth:`to_arrays`."""
        index = faiss.deserialize_index(np.asarray(arrays["hnsw_bytes"], dtype=np.uint8))
        self = cls.__new__(cls)
        self._index = index
        self.dim = index.d
        self.ef_search = ef_search
        index.hnsw.efSearch = ef_search
        self._pos_label = np.asarray(arrays["hnsw_pos_label"], np.int64)
        self._alive = np.asarray(arrays["hnsw_alive"], bool)
        self._label_pos = {int(l): i for i, l in enumerate(self._pos_label.tolist()) if self._alive[i]}
        self._dead = int((~self._alive).sum())
        return self


def index_kind(n: int, config: GalleryConfig) -> str:
    """"hnsw" when more than ``config.hnsw_above`` vectors are live, else "flat"."""
    return "hnsw" if n > config.hnsw_above else "flat"


def build_index(vectors: np.ndarray, labels: np.ndarray, config: GalleryConfig, *, kind: str | None = None) -> VectorIndex:
    """Build the index kind chosen for ``len(vectors)`` (or ``kind``) over ``(n, d)`` unit rows."""
    if vectors.ndim != 2:
        raise VectorError(f"vectors must be (n, d), got shape {vectors.shape}")
    kind = kind or index_kind(len(vectors), config)
    index: VectorIndex
    if kind == "flat":
        index = FlatIndex(vectors.shape[1])
    elif kind == "hnsw":
        index = HnswIndex(vectors.shape[1], config.hnsw_m, config.hnsw_ef_construction, config.hnsw_ef_search)
    else:
        raise ValueError(f"index kind {kind!r}: use 'flat' or 'hnsw'")
    index.add(vectors, labels)
    return index

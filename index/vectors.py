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

* ``IvfIndex`` — approximate search (``IndexIVFPQFastScan``: inverted lists
  of 4-bit PQ codes, scanned with SIMD) whose candidates are re-scored exactly
  from a float copy of the vectors, so its scores are exact and its recall is
  that of the lists probed. Removal is real (``remove_ids``). Measured on the
  same 1M set (``benchmarks/gallery.py``, 3000 queries, one thread): 2000
  lists (2·√n) trained on a 256k sample, 16-byte codes, 64 candidates
  re-scored: nprobe 256 → 0.71 ms, recall@1 0.992; 288 → 0.71-0.74 ms, 0.994;
  320 → 0.84 ms, 0.996; the right identity 1.000 at every setting. Build
  14-18 s instead of HNSW's 1125 s; memory ~670 MB (a float copy for
  re-scoring plus the codes). Fewer, longer lists beat more, shorter ones at
  equal recall (4000 lists need nprobe 448 for 0.993, ~0.2 ms slower: each
  probed list has a fixed cost), and a 128k k-means sample cost 0.003 of
  recall against 256k. The default nprobe is 288. It asks for a
  rebuild (retraining) when it has grown ``IVF_RETRAIN_GROWTH`` times past
  the size it was trained on.

:func:`build_index` picks the kind from the live count and the configuration.
"""
from __future__ import annotations

import logging
import math
from typing import Protocol

import faiss
import numpy as np

from faec_rec.config import GalleryConfig
from faec_rec.errors import VectorError

TOMBSTONE_REBUILD_FRACTION = 0.10
IVF_RETRAIN_GROWTH = 4.0  # retrain an IVF index once it holds this many times its training size
IVF_CODES = "PQ{m}x4fs"  # 4-bit PQ fast-scan codes, m sub-quantisers (see ivf_subquantizers)
IVF_TRAIN_PER_LIST = 128  # k-means sample: this many vectors per list ...
IVF_TRAIN_MAX = 256_000  # ... at most this many
IVF_KMEANS_ITER = 10
IVF_MIN_PER_LIST = 39  # fewer training points per list than this and k-means degrades

log = logging.getLogger(__name__)


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


def ivf_subquantizers(dim: int) -> int:
    """PQ sub-quantisers for ``dim``: one per 4 dimensions (16-byte codes at 128), else one per 2.

    The codes only rank candidates, which are then re-scored exactly, so they
    need to be good enough to keep the true neighbour in the short list, no
    better. At 1M templates (4000 lists, nprobe 384, 64 candidates) codes of 4
    dimensions keep recall@1 exactly where codes of 2 have it (0.9917 both)
    and scan in ~35 % less time (0.65-0.8 ms against 1.05-1.26 ms a query);
    codes of 8 dimensions lose it (0.985).
    """
    if dim % 2:
        raise VectorError(f"IVF needs an even vector size for its PQ codes, got {dim}")
    return dim // 4 if dim % 4 == 0 else dim // 2


def ivf_lists(n: int, requested: int = 0) -> int:
    """Inverted lists for ``n`` vectors: ``requested`` or ``2*sqrt(n)``, never more than ``n / 39``."""
    wanted = requested or int(2 * math.sqrt(max(1, n)))
    return max(1, min(wanted, n // IVF_MIN_PER_LIST))


class IvfIndex:
    """Approximate inner-product search over inverted lists, re-scored exactly; real deletes.

    The coarse quantiser and PQ codes are trained on the first batch given to
    :meth:`add` (or :meth:`train`), so build it with every vector at once
    (:func:`build_index`). The index keeps a float copy of each vector (row =
    FAISS id) to re-score ``refine * k`` candidates exactly.
    """

    kind = "ivf"

    def __init__(self, dim: int, nlist: int = 0, nprobe: int = 288, refine: int = 2) -> None:
        self.subquantizers = ivf_subquantizers(dim)
        self.dim = dim
        self.nlist_requested = nlist
        self.nprobe = nprobe
        self.refine = refine
        self._index: faiss.Index | None = None
        self.trained_on = 0
        self._rows = np.zeros((0, dim), np.float32)  # FAISS id -> vector (zeroed when removed)
        self._pos_label = np.empty(0, np.int64)  # FAISS id -> caller's label (-1 = removed)
        self._label_pos: dict[int, int] = {}
        self._n = 0  # FAISS ids used

    @property
    def nlist(self) -> int:
        return 0 if self._index is None else int(faiss.extract_index_ivf(self._index).nlist)

    def train(self, vectors: np.ndarray) -> None:
        """Train lists and codes on ``(n, dim) float32`` unit rows (a seeded sample of them)."""
        n = len(vectors)
        if n < 16:
            raise VectorError(f"an IVF index needs at least 16 vectors to train, got {n}: use the flat index")
        nlist = ivf_lists(n, self.nlist_requested)
        index = faiss.index_factory(self.dim, f"IVF{nlist},{IVF_CODES.format(m=self.subquantizers)}", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = IVF_KMEANS_ITER
        take = min(n, max(IVF_TRAIN_PER_LIST * nlist, 10_000), IVF_TRAIN_MAX)
        rows = np.sort(np.random.default_rng(n).choice(n, take, replace=False)) if take < n else np.arange(n)
        index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
        self._index = index
        self.trained_on = n
        log.info("IVF index trained: %d lists on %d of %d vectors", nlist, take, n)

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Add ``(n, dim) float32`` unit rows under ``(n,) int64`` labels (trains on them first if untrained)."""
        labels = _labels(labels)
        if not len(labels):
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self._index is None:
            self.train(vectors)
        index = self._index
        if index is None:
            raise VectorError("IVF index failed to train")
        start, end = self._n, self._n + len(labels)
        if end > len(self._rows):
            rows = np.zeros((max(end, 2 * len(self._rows)), self.dim), np.float32)
            rows[: self._n] = self._rows[: self._n]
            self._rows = rows
            pos_label = np.full(len(rows), -1, np.int64)
            pos_label[: self._n] = self._pos_label[: self._n]
            self._pos_label = pos_label
        self._rows[start:end] = vectors
        self._pos_label[start:end] = labels
        index.add_with_ids(vectors, np.arange(start, end, dtype=np.int64))
        for i, label in enumerate(labels.tolist()):
            self._label_pos[label] = start + i
        self._n = end

    def remove(self, labels: np.ndarray) -> None:
        """Delete these labels from the lists and the float copy (unknown labels are ignored)."""
        pos = [p for p in (self._label_pos.pop(l, None) for l in _labels(labels).tolist()) if p is not None]
        if not pos or self._index is None:
            return
        pos_arr = np.array(pos, np.int64)
        self._index.remove_ids(faiss.IDSelectorBatch(pos_arr))
        self._rows[pos_arr] = 0.0
        self._pos_label[pos_arr] = -1

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product: ``(n, k) float32`` exact scores, ``(n, k) int64`` labels (-1 = none)."""
        k = max(1, int(k))
        n = len(queries)
        scores = np.full((n, k), -np.inf, np.float32)
        labels = np.full((n, k), -1, np.int64)
        if len(self) == 0 or self._index is None:
            return scores, labels
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        candidates = min(len(self), max(k * self.refine, 64))
        nlist = self.nlist
        per_list = max(1.0, len(self) / nlist)
        # Asked for many neighbours (a wide runner-up search): probe enough lists to hold them.
        nprobe = min(nlist, max(self.nprobe, int(math.ceil(2 * candidates / per_list))))
        _, pos = self._index.search(queries, candidates, params=faiss.SearchParametersIVF(nprobe=nprobe))
        for i in range(n):
            row = pos[i][pos[i] >= 0]
            exact = self._rows[row] @ queries[i]
            order = np.lexsort((self._pos_label[row], -exact))[:k]  # best first, ties by label
            scores[i, : len(order)] = exact[order]
            labels[i, : len(order)] = self._pos_label[row[order]]
        return scores, labels

    def needs_rebuild(self) -> bool:
        """True once it holds ``IVF_RETRAIN_GROWTH`` times its training size, or removed rows outnumber live ones."""
        live = len(self)
        return live > IVF_RETRAIN_GROWTH * max(1, self.trained_on) or (self._n - live) > max(1024, live)

    def __len__(self) -> int:
        return len(self._label_pos)

    # ---- persistence: training takes a minute at 1M, so snapshots keep it ----
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The index as plain arrays (FAISS bytes, FAISS id -> label); the float rows are the caller's to keep."""
        if self._index is None:
            return {}
        return {
            "ivf_bytes": faiss.serialize_index(self._index),
            "ivf_pos_label": self._pos_label[: self._n],
            "ivf_trained_on": np.array([self.trained_on], np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], vectors_by_label: np.ndarray, nprobe: int, refine: int) -> IvfIndex:
        """Inverse of :meth:`to_arrays`; ``vectors_by_label[label]`` is the ``(dim,)`` vector stored under ``label``."""
        index = faiss.deserialize_index(np.asarray(arrays["ivf_bytes"], dtype=np.uint8))
        self = cls(index.d, 0, nprobe, refine)
        self._index = index
        self.trained_on = int(np.asarray(arrays["ivf_trained_on"]).reshape(-1)[0])
        self._pos_label = np.array(arrays["ivf_pos_label"], np.int64)
        self._n = len(self._pos_label)
        live = np.flatnonzero(self._pos_label >= 0)
        if index.ntotal != len(live):
            raise VectorError(f"IVF snapshot holds {index.ntotal} vectors but {len(live)} labels: rebuild the index")
        if len(live) and self._pos_label[live].max() >= len(vectors_by_label):
            raise VectorError("IVF snapshot names labels beyond the stored vectors: rebuild the index")
        self._rows = np.zeros((self._n, index.d), np.float32)
        self._rows[live] = vectors_by_label[self._pos_label[live]]
        self._label_pos = {int(self._pos_label[p]): int(p) for p in live.tolist()}
        return self


def index_kind(n: int, config: GalleryConfig) -> str:
    """``config.approximate`` ("ivf" or "hnsw") when more than ``config.hnsw_above`` vectors are live, else "flat"."""
    return config.approximate if n > config.hnsw_above else "flat"


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
    elif kind == "ivf":
        if len(vectors) < 16:
            index = FlatIndex(vectors.shape[1])  # too few to train lists; exact is cheaper anyway
        else:
            index = IvfIndex(vectors.shape[1], config.ivf_nlist, config.ivf_nprobe, config.ivf_refine)
    else:
        raise ValueError(f"index kind {kind!r}: use 'flat', 'ivf' or 'hnsw'")
    index.add(vectors, labels)
    return index

"""Face descriptors from aligned chips: the backbone behind one small class.

``Embedder.features`` gives raw 128-d backbone descriptors on dlib's scale (what the gallery
stores); ``Embedder.embed`` gives them L2-normalised (what cosine comparisons use). The model
is loaded lazily, once per instance and thread-safely, and run either by LiteRT (float32, the
default on CPUs without native bfloat16) or as one compiled TensorFlow function with its
weights frozen into constants (:mod:`faec_rec.faces.runtime`; ``model.predict`` costs ~80 ms
of overhead per call at batch 1). Both are converted from the Keras model once and cached.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from faec_rec.config import FacesConfig
from faec_rec.errors import VectorError
from faec_rec.faces.backbone import AUTO, BACKBONE_VERSION, DESCRIPTOR_DIM, INPUT_SIZE, PRECISIONS, load_backbone, resolve_precision, with_precision

log = logging.getLogger(__name__)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm.

    x: (n, d) float; returns (n, d) float32. Raises :class:`VectorError` for a non-2-D
    array, NaN/inf values or a zero row (nothing to normalise).
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise VectorError(f"expected an (n, d) array of vectors, got shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise VectorError(f"rows {bad[:10].tolist()} hold NaN or inf; cannot normalise")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if arr.shape[0] and (norms == 0).any():
        bad = np.flatnonzero(norms[:, 0] == 0)
        raise VectorError(f"rows {bad[:10].tolist()} are all zeros; cannot normalise")
    return (arr / norms).astype(np.float32, copy=False)


def _check_crops(crops: np.ndarray) -> np.ndarray:
    arr = np.asarray(crops)
    if arr.ndim == 3:
        raise VectorError(
            f"expected a batch (n, {INPUT_SIZE}, {INPUT_SIZE}, 3) of chips, got one image {arr.shape}: "
            "add a leading axis (crops[None])"
        )
    if arr.ndim != 4 or arr.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise VectorError(
            f"expected chips of shape (n, {INPUT_SIZE}, {INPUT_SIZE}, 3) RGB, got {arr.shape}: "
            "align faces with faec_rec.faces.align first"
        )
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise VectorError(f"chips must be uint8 RGB (or float 0..255, rounded to uint8), got dtype {arr.dtype}")
    return arr


class Embedder:
    """dlib's ResNet descriptor as a Keras model.

    ``config`` supplies ``flip_average``, ``batch_size`` and ``precision`` (keyword
    arguments override them); ``cache_dir`` is where the converted model is cached (default
    ``Settings().data_dir / "models"``). ``backbone_version`` names the model.
    """

    backbone_version: str = BACKBONE_VERSION

    def __init__(
        self,
        config: FacesConfig | None = None,
        cache_dir: Path | None = None,
        *,
        flip_average: bool | None = None,
        batch_size: int | None = None,
        precision: str | None = None,
        runtime: str | None = None,
    ) -> None:
        config = config or FacesConfig()
        self.flip_average = config.flip_average if flip_average is None else bool(flip_average)
        self.batch_size = config.batch_size if batch_size is None else int(batch_size)
        if self.batch_size < 1:
            raise VectorError(f"batch_size must be at least 1, got {self.batch_size}")
        wanted = config.precision if precision is None else precision
        if wanted not in (AUTO, *PRECISIONS):
            raise VectorError(f"precision must be one of {', '.join((AUTO, *PRECISIONS))}, got {wanted!r}")
        self.precision = resolve_precision(wanted)  # "auto" resolved for this CPU
        runner = config.runtime if runtime is None else runtime
        if runner not in ("auto", "litert", "tensorflow"):
            raise VectorError(f"runtime must be one of auto, litert, tensorflow, got {runner!r}")
        if runner == "litert" and self.precision != "float32":
            raise VectorError(f"runtime 'litert' runs float32 only; precision is {self.precision!r}")
        # "auto": LiteRT wherever the arithmetic is float32 (see faces/runtime.py)
        self.runtime = "litert" if runner == "litert" or (runner == "auto" and self.precision == "float32") else "tensorflow"
        self.cache_dir = cache_dir
        self._lock = threading.RLock()  # _ensure_loaded holds it while .model takes it again
        self._model: Any = None
        self._run: Any = None

    @property
    def model(self) -> Any:
        """The Keras backbone in this embedder's precision (loaded on first use; the worker's
        calls run a frozen copy of it, see :mod:`faec_rec.faces.runtime`)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = with_precision(load_backbone(self.cache_dir), self.precision)
        return self._model

    def _cache(self, name: str) -> Path | None:
        """Where this configuration's converted model is cached: ``name`` "graph" (the frozen
        TensorFlow graph) or "lite" (the LiteRT model); None if the dlib source is missing."""
        from faec_rec.faces import dlib_format
        from faec_rec.faces.backbone import default_cache_dir
        from faec_rec.faces.runtime import graph_cache_path, lite_cache_path
        from faec_rec.files import sha256_file

        source = dlib_format.default_model_path()
        if not source.is_file():
            return None
        cache_dir = Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()
        if name == "lite":
            return lite_cache_path(cache_dir, sha256_file(source), self.flip_average)
        return graph_cache_path(cache_dir, sha256_file(source), self.precision, self.flip_average)

    def _ensure_loaded(self) -> None:
        if self._run is not None:
            return
        from faec_rec.faces import runtime

        # One thread loads (a cached model, else the Keras model); the others wait for it.
        with self._lock:
            if self._run is not None:
                return
            # where this runtime's converted model is cached (None without the dlib source)
            lite = self._cache("lite") if self.runtime == "litert" else None
            graph = self._cache("graph") if self.runtime == "tensorflow" else None
            if lite is not None:
                run_cached = runtime.load_lite(lite)  # cold start: no TensorFlow
            else:
                run_cached = runtime.load_frozen(graph) if graph is not None else None  # no Keras
            if run_cached is not None:
                self._run = run_cached
                return
            tf = runtime.tensorflow()
            model = self.model
            # uint8 in, cast inside the graph: a quarter of the bytes to hand over per call
            spec = tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.uint8)

            if self.flip_average:

                def run(chips: Any) -> Any:
                    x = tf.cast(chips, tf.float32)
                    n = tf.shape(x)[0]
                    # one call on chips and mirrors together: better use of both cores than two
                    both = model(tf.concat([x, tf.reverse(x, axis=[2])], axis=0), training=False)
                    return (both[:n] + both[n:]) * 0.5

            else:

                def run(chips: Any) -> Any:
                    return model(tf.cast(chips, tf.float32), training=False)

            frozen = runtime.frozen_call(run, spec)  # variables as constants: see faces/runtime.py
            if self.runtime == "litert":
                converted = runtime.convert_lite(run, spec, lite, frozen)
                if converted is not None:
                    self._run = converted
                    return
            self._run = frozen
            if graph is not None:
                runtime.save_frozen(frozen, graph)

    def features(self, crops: np.ndarray) -> np.ndarray:
        """Raw backbone descriptors.

        crops: (n, 150, 150, 3) uint8 RGB face chips (dlib geometry, see ``align``); float
        chips are rounded to uint8 first. Returns (n, 128) float32 on dlib's scale (norms
        around 1.3-1.6 for real faces), averaged with the mirror chip when
        ``flip_average``; run in batches of ``batch_size``.
        """
        arr = _check_crops(crops)
        if arr.shape[0] == 0:
            return np.zeros((0, DESCRIPTOR_DIM), np.float32)
        self._ensure_loaded()
        out = np.empty((arr.shape[0], DESCRIPTOR_DIM), np.float32)
        for start in range(0, arr.shape[0], self.batch_size):
            chunk = arr[start : start + self.batch_size]
            if chunk.dtype != np.uint8:
                chunk = np.clip(np.rint(chunk), 0, 255).astype(np.uint8)
            chunk = np.ascontiguousarray(chunk)
            out[start : start + len(chunk)] = self._run(chunk)
        return out

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """L2-normalised descriptors: (n, 150, 150, 3) uint8 RGB -> (n, 128) float32, unit norm."""
        feats = self.features(crops)
        if feats.shape[0] == 0:
            return feats
        return l2_normalise(feats)

"""Embedding versions: how stored backbone features become searchable vectors.

The gallery stores raw backbone features (dlib scale, ``(n, 128) float32``); a
*projector* maps them to the L2-normalised vectors the index searches. The
``version`` string names the projection ("base", "head-3", ...); vectors of two
versions are never compared. A model version string for events is
``f"{backbone_version}/{projector.version}"``.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from faec_rec.errors import VectorError

DIM = 128
BASE_VERSION = "base"
# Rows whose norm is below this are treated as zero vectors (no direction to compare).
_MIN_NORM = 1e-12
# How far from 1 the norm of a vector that claims to be L2-normalised may be.
_UNIT_TOLERANCE = 1e-3


@runtime_checkable
class Projector(Protocol):
    """Maps backbone features to comparable vectors.

    ``project(features (n, 128) float32) -> (n, 128) float32`` L2-normalised rows.
    A projector may also carry ``threshold: float | None``, the global
    similarity threshold calibrated for its version.
    """

    version: str

    def project(self, features: np.ndarray) -> np.ndarray: ...


def check_vectors(x: np.ndarray, what: str = "features", *, dim: int = DIM) -> np.ndarray:
    """Return ``x`` as a C-contiguous ``(n, dim) float32`` array or raise :class:`VectorError`.

    A single ``(dim,)`` vector is accepted as one row. float64 is refused rather
    than silently cast, because it usually means the caller skipped the
    embedder; NaN/inf and all-zero rows are refused.
    """
    if not isinstance(x, np.ndarray):
        raise VectorError(f"{what} must be a numpy array of shape (n, {dim}) float32, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise VectorError(f"{what} must be float32, got {x.dtype}: convert with .astype(np.float32)")
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise VectorError(f"{what} must have shape (n, {dim}), got {x.shape}")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise VectorError(f"{what} row {bad} holds NaN or infinity")
    norms = np.linalg.norm(x, axis=1)
    if x.shape[0] and (norms < _MIN_NORM).any():
        bad = int(np.flatnonzero(norms < _MIN_NORM)[0])
        raise VectorError(f"{what} row {bad} is a zero vector: it has no direction to compare")
    return np.ascontiguousarray(x)


def check_unit_vectors(x: np.ndarray, what: str = "embeddings") -> np.ndarray:
    """Like :func:`check_vectors`, and every row must have norm 1 (within 1e-3)."""
    x = check_vectors(x, what)
    norms = np.linalg.norm(x, axis=1)
    off = np.abs(norms - 1.0) > _UNIT_TOLERANCE
    if off.any():
        bad = int(np.flatnonzero(off)[0])
        raise VectorError(
            f"{what} row {bad} has norm {norms[bad]:.4f}, not 1: project the features first "
            "(Gallery.projector.project) or call Gallery.identify_features with raw features"
        )
    return x


def normalise(x: np.ndarray) -> np.ndarray:
    """L2-normalise the rows of a checked ``(n, d) float32`` array (returns a new array)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / norms).astype(np.float32, copy=False)


class BaseProjector:
    """Version "base": the backbone features, L2-normalised. Nothing to train."""

    version = BASE_VERSION
    threshold: float | None = None

    def project(self, features: np.ndarray) -> np.ndarray:
        """``(n, 128) float32`` raw features -> ``(n, 128) float32`` unit rows."""
        return normalise(check_vectors(features))

    def __repr__(self) -> str:
        return "BaseProjector()"

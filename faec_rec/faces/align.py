"""Face alignment: dlib's 150x150 face chip, reproduced from the detector's landmarks.

dlib's descriptor network was trained on chips made by a similarity transform
from its own 5-point landmarks (eye corners, nose base) to a fixed template with
0.25 padding. Our detector's landmarks are other points (see
:mod:`faec_rec.faces.detect`), so :data:`TEMPLATE_150` holds where *those*
points fall, on average, inside dlib's chip: fitted on real LFW faces by
``benchmarks/fit_alignment.py`` (dlib HOG + shape_predictor_5 +
``get_face_chip_details`` give each face's chip transform; our landmarks are
mapped through it and averaged). Alignment is then a least-squares similarity
from the detected landmarks to the template, and a bilinear warp.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from faec_rec.errors import ImageError
from faec_rec.faces.types import Face

CHIP_SIZE = 150

# Where the detector's 5 landmarks (rows as in faec_rec.faces.detect) fall in dlib's
# 150x150 chip, padding 0.25. Fitted by benchmarks/fit_alignment.py: see FIT_NOTE.
TEMPLATE_150 = np.array(
    [
        [46.271, 45.947],
        [101.321, 46.628],
        [73.969, 79.59],
        [49.982, 107.415],
        [97.469, 108.003],
    ],
    dtype=np.float64,
)
# Per-landmark weights of the least-squares fit: eyes doubled, nose tip halved (it
# moves with head pose); the best of four options tried by the fitting script.
TEMPLATE_WEIGHTS = np.array([2.0, 2.0, 0.5, 1.0, 1.0])
# How the constants above were fitted (python -m benchmarks.fit_alignment --n 400 --seed 0):
FIT_NOTE = (
    "400 LFW faces; mean of our landmarks mapped into dlib's chip; landmark scatter around "
    "the template 5.4 px RMS; our chip vs dlib's chip: 4.4 px RMS displacement over a 5x5 "
    "grid of chip points (4.8 px with equal weights)"
)


def similarity_transform(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src to dst.

    src, dst: (k, 2) points, k >= 2; weights: (k,) non-negative or None.
    Returns (2, 3) float64 ``M`` with ``dst ~= src @ M[:, :2].T + M[:, 2]``
    (Umeyama's closed form). Raises :class:`ImageError` when ``src`` is degenerate
    (all points coincide) or not finite.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ImageError("<landmarks>", f"need matching (k>=2, 2) point sets, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ImageError("<landmarks>", "landmarks contain NaN or infinity")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s0, d0 = src - mu_s, dst - mu_d
    var_s = float(w @ (s0**2).sum(1))
    if var_s < 1e-12:
        raise ImageError("<landmarks>", "landmarks all coincide; cannot align this face")
    cov = (d0 * w[:, None]).T @ s0
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = float((sig * sign).sum() / var_s)
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def chip_transform(landmarks: np.ndarray, size: int = CHIP_SIZE) -> np.ndarray:
    """(2, 3) image->chip similarity for one face's (5, 2) landmarks, chip of ``size`` pixels."""
    template = TEMPLATE_150 * (size / CHIP_SIZE)
    return similarity_transform(landmarks, template, TEMPLATE_WEIGHTS)


def align(image: np.ndarray, faces: Sequence[Face], size: int = CHIP_SIZE) -> np.ndarray:
    """Cut each face's chip out of ``image``.

    image: (h, w, 3) uint8 RGB; faces: detections with landmarks in that image's pixels.
    Returns (n, size, size, 3) uint8 RGB chips (dlib geometry, 0.25 padding);
    (0, size, size, 3) for no faces. Outside the image is black, as in dlib.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError("<array>", "align expects an (h, w, 3) uint8 RGB image")
    if not 16 <= int(size) <= 1024:
        raise ImageError("<array>", f"chip size must be 16-1024 pixels, got {size}")
    chips = np.zeros((len(faces), size, size, 3), np.uint8)
    for i, face in enumerate(faces):
        m = chip_transform(np.asarray(face.landmarks, dtype=np.float64).reshape(5, 2), size)
        chips[i] = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return chips

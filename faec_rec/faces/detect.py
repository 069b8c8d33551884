"""Face detection: the ``Detector`` seam and the BlazeFace multi-scale detector behind it.

Landmark convention of every :class:`~faec_rec.faces.types.Face` this module
returns (rows of ``landmarks``, image pixels), the common 5-point layout:

0. eye centre on the image's left (the subject's right eye)
1. eye centre on the image's right
2. nose tip
3. mouth corner on the image's left
4. mouth corner on the image's right

BlazeFace measures the mouth *centre*, not its corners: rows 3 and 4 are
placed at the mouth centre -/+ half a mouth width along the eye axis, the width
being :data:`MOUTH_WIDTH_PER_EYE_DISTANCE` inter-eye distances (fitted on LFW,
see ``benchmarks/fit_alignment.py``). The alignment template is fitted on the
same points, so the estimate costs nothing there.

How the detector covers every face size with a model of fixed input
(192x192, reliable for faces of ~12-100 input pixels: 100 % of 150 LFW faces
pasted at 12-64 px, 98 % at 96 px, 93 % at 128 px, 58 % at 6 px):

1. Images larger than ``detect_max_side`` are downscaled first
   (``min_face_px`` counts in the downscaled image).
2. A pyramid of square windows: level 0 has side ``192 * min_face / 12.5`` so the
   smallest wanted face is 12.5 input pixels (min_face = 0.8 x min_face_px, see
   ``_BOX_SLACK``); each next level is 4x larger; the last level is the whole
   image, letterboxed. Windows of one level overlap by more than the largest
   face the next level cannot see. The image is resized once per level.
3. Candidates of every window are mapped back to image pixels and merged by
   weighted non-maximum suppression.
4. Second look: a candidate scoring just under the threshold (0.3 to 0.5) is
   detected again in a window centred on it where it measures 64 model pixels;
   it is kept if it then passes the threshold.

With ``min_face_px=40`` a 640x480 frame takes 5 windows, 1280x720 takes 9
(plus one per borderline candidate). Measured against dlib's HOG detector on
``group_photos/`` (faces HOG finds at >= 40 px): 1 of 205 lost; nothing
detected on ``no_face/``. MTCNN (``mtcnn`` 1.0) was measured at ~167 ms per
600 px photo and is not used.
"""
from __future__ import annotations

import logging
import math
from typing import Protocol

import cv2
import numpy as np

from faec_rec.config import FacesConfig
from faec_rec.errors import ConfigError, ImageError
from faec_rec.faces import blazeface
from faec_rec.faces.types import Face

log = logging.getLogger(__name__)

# Mouth width / inter-eye distance, fitted with dlib's 68-point model on LFW
# (benchmarks/fit_alignment.py); used to place BlazeFace's mouth corners.
MOUTH_WIDTH_PER_EYE_DISTANCE = 0.8626

# Smallest face side, in model input pixels, the full-range model finds reliably
# (100 % of 150 LFW faces at 12 px, 92 % at 8 px). 12.5 rather than 14 makes a
# 640x480 frame 3 windows instead of 5 (28 -> 17 ms here, under load) with the
# same recall against dlib's HOG on group_photos/ (1 of 205 lost either way).
_MIN_INPUT_FACE = 12.5
# Each pyramid level's windows are this many times larger than the previous level's.
_LEVEL_RATIO = 4.0
# Overlap of neighbouring windows, in units of the largest face the next level misses.
_OVERLAP_MARGIN = 1.5
# BlazeFace boxes of small faces are tighter than dlib's (median 1.02x, 5th
# percentile 0.85x on group photos, ~0.8x at 36 px): search and report faces down
# to this fraction of min_face_px so none that dlib would call min_face_px is lost.
_BOX_SLACK = 0.8
_NMS_IOU = 0.3
# Candidates below this score are not even merged (the caller's threshold applies after).
_CANDIDATE_SCORE = 0.3
# Candidates scoring in [_SECOND_LOOK_SCORE, threshold) are re-detected in a window
# where they measure _SECOND_LOOK_FACE model pixels (at most _SECOND_LOOK_MAX per image).
_SECOND_LOOK_SCORE = 0.3
_SECOND_LOOK_FACE = 64.0
_SECOND_LOOK_MAX = 16


class Detector(Protocol):
    """Finds faces: (h, w, 3) uint8 RGB in, faces sorted by score (best first) out."""

    def detect(self, image: np.ndarray) -> list[Face]:
        """Every face at least ``min_face_px`` on its side; an empty list when there is none."""
        ...


def check_image(image: np.ndarray) -> None:
    """Raise :class:`ImageError` unless ``image`` is (h, w, 3) uint8 with h, w >= 1."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"shape {image.shape}, dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ImageError("<array>", f"expected an (h, w, 3) uint8 RGB image, got {got}; decode files with load_image")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError("<array>", f"empty image of shape {image.shape}")


def pyramid_windows(width: int, height: int, min_face: float) -> list[tuple[float, float, float]]:
    """Square windows ``(x0, y0, side)`` (image pixels) covering faces of ``min_face`` px and up.

    Level 0 windows make a ``min_face`` face :data:`_MIN_INPUT_FACE` model pixels;
    each next level is :data:`_LEVEL_RATIO` times larger; the last window is the
    whole image letterboxed (centred square of the larger side). Windows of a
    level overlap by more than the largest face the next level cannot see, so
    every face lies whole inside some window of a level that can see it.
    """
    big = float(max(width, height))
    size = blazeface.FULL_RANGE.input_size
    windows: list[tuple[float, float, float]] = []
    side = size * min_face / _MIN_INPUT_FACE
    while side < big:
        next_side = min(side * _LEVEL_RATIO, big)
        overlap = min(_OVERLAP_MARGIN * _MIN_INPUT_FACE / size * next_side, 0.5 * side)
        for y0 in _starts(height, side, overlap):
            for x0 in _starts(width, side, overlap):
                windows.append((x0, y0, side))
        side *= _LEVEL_RATIO
    windows.append(((width - big) / 2.0, (height - big) / 2.0, big))
    return windows


def _starts(length: int, side: float, overlap: float) -> list[float]:
    """Evenly spread window starts along one axis, neighbours overlapping by at least ``overlap``."""
    if side >= length:
        return [(length - side) / 2.0]
    count = math.ceil((length - side) / (side - overlap)) + 1
    return [float(v) for v in np.linspace(0.0, length - side, count)]


def mouth_corners(landmarks6: np.ndarray) -> np.ndarray:
    """Estimated mouth corners (m, 2, 2) from BlazeFace keypoints (m, 6, 2): mouth centre -/+ half width."""
    eye_axis = landmarks6[:, 1] - landmarks6[:, 0]
    half = 0.5 * MOUTH_WIDTH_PER_EYE_DISTANCE * eye_axis
    mouth = landmarks6[:, 3]
    return np.stack([mouth - half, mouth + half], axis=1)


class BlazeFaceDetector:
    """MediaPipe's full-range BlazeFace over a pyramid of windows (see the module docstring).

    ``min_face_px``: smallest face side reported, in pixels of the image as
    detected (after the downscale); ``max_side``: images are downscaled to this
    larger side before detection;
    ``score_threshold``: minimum confidence.
    """

    def __init__(self, min_face_px: int = 40, max_side: int = 1280, score_threshold: float = 0.6, num_threads: int = 1) -> None:
        self.min_face_px = min_face_px
        self.max_side = max_side
        self.score_threshold = score_threshold
        self.model = blazeface.BlazeFaceModel(blazeface.FULL_RANGE, num_threads=num_threads)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in (h, w, 3) uint8 RGB ``image``, best first; boxes and landmarks in its pixels."""
        check_image(image)
        h, w = image.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        work = image if scale == 1.0 else cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        sy, sx = h / work.shape[0], w / work.shape[1]
        # min_face_px is measured in the image as detected: downscaling a big photo trades
        # its smallest faces for a bounded number of windows (9 at 1280x720).
        min_side = self.min_face_px * _BOX_SLACK
        boxes, scores, points = self._detect_windows(work, min_side)
        boxes, scores, points = self._second_look(work, boxes, scores, points, min_side)
        keep = (scores >= self.score_threshold) & (np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_side)
        boxes = boxes[keep] * np.array([sx, sy, sx, sy], np.float32)
        points = points[keep] * np.array([sx, sy], np.float32)
        faces = []
        for box, score, pts in zip(boxes, scores[keep], points):
            landmarks = np.concatenate([pts[:3], mouth_corners(pts[None])[0]]).astype(np.float32)
            faces.append(Face(box=box.astype(np.float32), score=float(score), landmarks=landmarks))
        return faces

    def _second_look(self, image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, points: np.ndarray, min_side: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Re-detect borderline candidates in a window where the face is ~64 model pixels.

        A face seen small or cut by a window edge can score just under the
        threshold; seen again centred at the model's best scale it scores
        clearly above it (or stays below: then it is dropped as before).
        """
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        borderline = np.flatnonzero((scores < self.score_threshold) & (scores >= _SECOND_LOOK_SCORE) & (sides >= min_side))
        size = self.model.spec.input_size
        for i in borderline[np.argsort(-scores[borderline])][:_SECOND_LOOK_MAX]:
            side = float(max(boxes[i, 2] - boxes[i, 0], boxes[i, 3] - boxes[i, 1])) * size / _SECOND_LOOK_FACE
            cx, cy = (boxes[i, 0] + boxes[i, 2]) / 2.0, (boxes[i, 1] + boxes[i, 3]) / 2.0
            square, to_image = blazeface.letterbox(image, cx - side / 2.0, cy - side / 2.0, side, size)
            b, s, k = self.model.run(square, self.score_threshold)
            if not len(s):
                continue
            lin, off = to_image[:, :2] * size, to_image[:, 2]
            b = np.concatenate([b[:, :2] @ lin.T + off, b[:, 2:] @ lin.T + off], axis=1)
            iou = blazeface.box_iou(boxes[i], b)
            j = int(np.argmax(np.where(iou > 0.5, s, -1.0)))
            if iou[j] > 0.5:
                boxes[i], scores[i], points[i] = b[j], s[j], k[j] @ lin.T + off
        return boxes, scores, points

    def _detect_windows(self, image: np.ndarray, min_face: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        size = self.model.spec.input_size
        levels: dict[float, list[tuple[float, float]]] = {}
        for x0, y0, side in pyramid_windows(image.shape[1], image.shape[0], min_face):
            levels.setdefault(side, []).append((x0, y0))
        all_b, all_s, all_k = [], [], []
        for side, starts in levels.items():
            # one resize per level; its windows are then plain slices
            scaled, fx, fy = blazeface.scale_image(image, size / side)
            for x0, y0 in starts:
                u0, v0 = int(round(x0 / fx)), int(round(y0 / fy))
                b, s, k = self.model.run(blazeface.window(scaled, u0, v0, size), _CANDIDATE_SCORE)
                if not len(s):
                    continue
                lin = np.array([fx * size, fy * size])
                off = np.array([u0 * fx, v0 * fy])
                all_b.append(b * np.tile(lin, 2) + np.tile(off, 2))
                all_k.append(k * lin + off)
                all_s.append(s)
        if not all_s:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 6, 2), np.float32)
        return blazeface.weighted_nms(np.concatenate(all_b), np.concatenate(all_s), np.concatenate(all_k), _NMS_IOU)


_DETECTORS = ("blazeface",)


def make_detector(config: FacesConfig | None = None) -> Detector:
    """The detector named by ``config.detector``, set up from ``config``."""
    config = config or FacesConfig()
    if config.detector == "blazeface":
        return BlazeFaceDetector(config.min_face_px, config.detect_max_side, config.score_threshold)
    raise ConfigError(f"unknown faces.detector {config.detector!r}; valid values: {', '.join(_DETECTORS)}")


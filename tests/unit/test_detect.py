"""BlazeFace decoding maths and the scale pyramid, on synthetic data (no model run)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from faec_rec.faces import blazeface
from faec_rec.faces.detect import MOUTH_WIDTH_PER_EYE_DISTANCE, mouth_corners, pyramid_scales

# faec_rec.faces re-exports a `detect` function that shadows the module attribute
detect_module = sys.modules["faec_rec.faces.detect"]


def test_decode_places_box_and_keypoints_relative_to_the_anchor() -> None:
    anchors = blazeface.grid_anchors(192, 192, 4)
    raw = np.zeros((len(anchors), 16), np.float32)
    logits = np.full(len(anchors), -10.0, np.float32)
    k = 1000
    raw[k, :4] = [9.6, -19.2, 38.4, 57.6]  # centre offset (+9.6, -19.2) px, size 38.4 x 57.6 px
    raw[k, 4:6] = [-19.2, 0.0]  # first keypoint 19.2 px left of the anchor
    logits[k] = 3.0
    boxes, scores, points = blazeface.decode(raw, logits, anchors, min_score=0.5)
    assert boxes.shape == (1, 4) and points.shape == (1, 6, 2)
    cx, cy = anchors[k] + [9.6, -19.2]
    np.testing.assert_allclose(boxes[0], [cx - 19.2, cy - 28.8, cx + 19.2, cy + 28.8], atol=1e-4)
    np.testing.assert_allclose(points[0, 0], anchors[k] + [-19.2, 0.0], atol=1e-4)
    np.testing.assert_allclose(points[0, 1], anchors[k], atol=1e-6)
    assert scores[0] == pytest.approx(1 / (1 + np.exp(-3.0)), rel=1e-6)


def test_decode_clips_huge_logits_and_drops_empty_boxes() -> None:
    anchors = blazeface.grid_anchors(128, 128, 4)
    raw = np.zeros((len(anchors), 16), np.float32)
    raw[:, 2:4] = 10.0
    raw[5, 2] = -1.0  # negative width: not a box
    logits = np.full(len(anchors), -1e9, np.float32)
    logits[[3, 5]] = 1e9
    with np.errstate(over="raise"):
        boxes, scores, _ = blazeface.decode(raw, logits, anchors, min_score=0.5)
    assert len(boxes) == 1 and scores[0] == pytest.approx(1.0)


def test_weighted_nms_merges_overlaps_and_keeps_separate_faces() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.6, 0.7], np.float32)
    points = np.zeros((3, 6, 2), np.float32)
    points[1] += 1.0
    b, s, k = blazeface.weighted_nms(boxes, scores, points, iou_threshold=0.3)
    assert len(b) == 2
    np.testing.assert_allclose(s, [0.9, 0.7])  # best first, the best's score
    np.testing.assert_allclose(b[0], [0.6 / 1.5, 0, 10 + 0.6 / 1.5, 10], atol=1e-6)  # score-weighted mean
    np.testing.assert_allclose(k[0], np.full((6, 2), 0.6 / 1.5), atol=1e-6)
    np.testing.assert_allclose(b[1], boxes[2])
    empty = blazeface.weighted_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 6, 2), np.float32))
    assert [len(a) for a in empty] == [0, 0, 0]


def test_letterbox_maps_canvas_pixels_back_to_image_pixels(rng: np.random.Generator) -> None:
    image = np.zeros((300, 500, 3), np.uint8)
    image[100:110, 400:410] = 255  # a white square
    for x0, y0, side in [(0.0, -100.0, 500.0), (250.0, 50.0, 200.0), (333.3, 12.7, 150.0)]:
        canvas, to_image = blazeface.letterbox(image, x0, y0, side, 192)
        assert canvas.shape == (192, 192, 3)
        ys, xs = np.nonzero(canvas[:, :, 0] > 128)
        centre = np.array([xs.mean(), ys.mean(), 1.0])
        np.testing.assert_allclose(to_image @ centre, [404.5, 104.5], atol=side / 192 + 0.5)


def test_letterbox_pads_outside_the_image_with_black() -> None:
    image = np.full((100, 200, 3), 200, np.uint8)
    canvas, _ = blazeface.letterbox(image, -0.0, -50.0, 200.0, 128)
    assert canvas[:20].max() == 0 and canvas[-20:].max() == 0 and canvas[64].min() == 200


def test_grid_anchors_follow_any_input_shape() -> None:
    anchors = blazeface.grid_anchors(64, 96, 4)
    assert anchors.shape == (16 * 24, 2)
    np.testing.assert_allclose(anchors[0], [2.0, 2.0])
    np.testing.assert_allclose(anchors[1], [6.0, 2.0])  # x fastest, like the model's output
    np.testing.assert_allclose(anchors[24], [2.0, 6.0])
    native = blazeface.grid_anchors(192, 192, 4)  # the model's 2304 outputs at its own size
    assert native.shape == (2304, 2) and native.min() == 2.0 and native.max() == 190.0


def test_pad_input_aligns_both_sides_with_black() -> None:
    image = np.full((100, 33, 3), 7, np.uint8)
    padded = blazeface.pad_input(image)
    assert padded.shape == (128, 64, 3)
    assert (padded[:100, :33] == 7).all() and padded[100:].max() == 0 and padded[:, 33:].max() == 0
    aligned = np.zeros((96, 64, 3), np.uint8)
    assert blazeface.pad_input(aligned) is aligned


@pytest.mark.parametrize("size", [(640, 480), (1280, 720), (1000, 3000), (250, 250), (1, 1), (37, 900)])
@pytest.mark.parametrize("min_face", [20.0, 32.0, 80.0])
def test_pyramid_sees_every_face_size_in_the_networks_range(size: tuple[int, int], min_face: float) -> None:
    w, h = size
    scales = pyramid_scales(w, h, min_face)
    assert scales == sorted(scales, reverse=True)
    assert scales[0] * max(w, h) >= 192 - 1e-6  # never smaller than the network's own input
    assert min(w, h) * scales[-1] <= detect_module._MAX_INPUT_FACE  # the largest possible face fits
    # every face from min_face up to the image's short side measures 14-100 model pixels at some scale
    for side in np.geomspace(min_face, max(min_face, min(w, h)), 50):
        if side > min(w, h):
            continue
        sizes = [side * s for s in scales]
        assert any(detect_module._MIN_INPUT_FACE - 1e-6 <= px <= detect_module._MAX_INPUT_FACE + 1e-6 for px in sizes), (size, min_face, side, sizes)


def test_pyramid_is_two_small_calls_for_a_vga_frame() -> None:
    scales = pyramid_scales(640, 480, 32.0)
    assert len(scales) == 2
    assert blazeface.pad_input(np.zeros((round(480 * scales[0]), round(640 * scales[0]), 3), np.uint8)).shape[:2] == (224, 288)
    assert pyramid_scales(250, 250, 32.0) == [192 / 250, 192 / 250 / 4]


def test_mouth_corners_straddle_the_mouth_along_the_eye_axis() -> None:
    pts = np.zeros((1, 6, 2), np.float32)
    pts[0, :4] = [[40, 50], [80, 50], [60, 70], [60, 90]]
    corners = mouth_corners(pts)[0]
    half = 0.5 * MOUTH_WIDTH_PER_EYE_DISTANCE * 40
    np.testing.assert_allclose(corners, [[60 - half, 90], [60 + half, 90]], atol=1e-5)


class _CentredFaceModel:
    """Stands in for the network: sees one face of 48 model pixels at the crop's centre."""

    spec = blazeface.FULL_RANGE

    def __init__(self, score: float) -> None:
        self.score = score
        self.calls = 0
        self.shapes: list[tuple[int, ...]] = []

    def run(self, image: np.ndarray, min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.calls += 1
        self.shapes.append(image.shape)
        if self.score < min_score:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 6, 2), np.float32)
        c = image.shape[1] / 2.0
        box = np.array([[c - 24.0, c - 24.0, c + 24.0, c + 24.0]], np.float32)
        return box, np.array([self.score], np.float32), np.full((1, 6, 2), c, np.float32)


@pytest.mark.parametrize("second_score, kept", [(0.9, True), (0.4, False)])
def test_second_look_confirms_or_drops_borderline_faces(second_score: float, kept: bool) -> None:
    from faec_rec.faces.detect import BlazeFaceDetector

    detector = BlazeFaceDetector(min_face_px=40, score_threshold=0.5)
    detector.model = _CentredFaceModel(second_score)  # type: ignore[assignment]
    image = np.zeros((300, 400, 3), np.uint8)
    boxes = np.array([[100, 100, 160, 160], [10, 10, 70, 70]], np.float32)
    scores = np.array([0.45, 0.1], np.float32)  # one borderline, one far below
    points = np.zeros((2, 6, 2), np.float32)
    b, s, k = detector._second_look(image, boxes.copy(), scores.copy(), points.copy(), min_side=32)
    assert detector.model.calls == 1  # only the borderline candidate was looked at again
    assert detector.model.shapes == [(96, 96, 3)]
    if kept:
        assert s[0] == pytest.approx(0.9)
        np.testing.assert_allclose(b[0], boxes[0], atol=1.0)  # same face, re-measured
        np.testing.assert_allclose(k[0], np.full((6, 2), 130.0), atol=1.0)
    else:
        assert s[0] == pytest.approx(0.45)
    assert s[1] == pytest.approx(0.1)


@pytest.mark.parametrize("first_score, kept", [(0.4, True), (0.2, False)])
def test_weak_candidates_need_stronger_second_evidence(first_score: float, kept: bool) -> None:
    from faec_rec.faces.detect import BlazeFaceDetector

    detector = BlazeFaceDetector(min_face_px=40, score_threshold=0.5)
    detector.model = _CentredFaceModel(0.6)  # type: ignore[assignment]  # passes 0.5, not 0.7
    boxes = np.array([[100, 100, 160, 160]], np.float32)
    b, s, _ = detector._second_look(np.zeros((300, 400, 3), np.uint8), boxes.copy(), np.array([first_score], np.float32),
                                    np.zeros((1, 6, 2), np.float32), min_side=32)
    assert detector.model.calls == 1  # both are looked at again
    assert bool(s[0] == pytest.approx(0.6)) == kept

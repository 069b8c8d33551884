"""The enrolment quality gate on synthetic faces and chips (seeded)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from faec_rec.faces.quality import QualityThresholds, Reason, assess, choose_face, sharpness, yaw
from faec_rec.faces.types import Face


def make_face(x: float, y: float, side: float, nose_shift: float = 0.0, angle_deg: float = 0.0) -> Face:
    """A face box with eyes/nose landmarks; ``nose_shift`` moves the nose along the
    eye axis in inter-eye distances; ``angle_deg`` rotates the landmarks in-plane."""
    cx, cy = x + side / 2, y + side / 2
    iod = side * 0.4
    pts = np.array([[-iod / 2, -side * 0.1], [iod / 2, -side * 0.1], [nose_shift * iod, side * 0.1],
                    [-iod / 3, side * 0.3], [iod / 3, side * 0.3]], dtype=np.float64)
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = pts @ rot.T + [cx, cy]
    return Face(box=np.array([x, y, x + side, y + side], np.float32), score=0.9, landmarks=pts.astype(np.float32))


@pytest.fixture
def sharp_chip(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(150, 150, 3), dtype=np.uint8)


def test_no_face_is_refused(sharp_chip: np.ndarray) -> None:
    verdict = assess([], lambda f: sharp_chip)
    assert verdict.reason is Reason.NO_FACE and not verdict.accepted


def test_single_good_face_is_accepted(sharp_chip: np.ndarray) -> None:
    verdict = assess([make_face(10, 10, 120)], lambda f: sharp_chip)
    assert verdict.accepted, verdict
    assert verdict.face_px == pytest.approx(120)
    assert verdict.to_json()["reason"] == "ok"


def test_similar_sized_faces_are_refused_but_a_dominant_face_is_taken(sharp_chip: np.ndarray) -> None:
    group = [make_face(0, 0, 100), make_face(200, 0, 90)]
    assert assess(group, lambda f: sharp_chip).reason is Reason.SEVERAL_FACES
    big, small = make_face(0, 0, 200), make_face(300, 0, 60)
    face, reason, _ = choose_face([small, big])
    assert reason is Reason.OK and face is big
    assert assess([small, big], lambda f: sharp_chip).accepted


def test_small_face_is_refused(sharp_chip: np.ndarray) -> None:
    verdict = assess([make_face(0, 0, 40)], lambda f: sharp_chip)
    assert verdict.reason is Reason.FACE_TOO_SMALL
    assert "40 px" in verdict.detail


def test_turned_head_is_refused_whatever_the_roll(sharp_chip: np.ndarray) -> None:
    for angle in (0.0, 30.0, -60.0, 180.0):
        assert yaw(make_face(0, 0, 120, 0.0, angle).landmarks) == pytest.approx(0.0, abs=1e-6)
        assert yaw(make_face(0, 0, 120, 0.5, angle).landmarks) == pytest.approx(0.5, abs=1e-6)
    verdict = assess([make_face(0, 0, 120, nose_shift=0.5, angle_deg=20)], lambda f: sharp_chip)
    assert verdict.reason is Reason.NOT_FRONTAL


def test_degenerate_landmarks_count_as_not_frontal(sharp_chip: np.ndarray) -> None:
    face = make_face(0, 0, 120)
    lm = face.landmarks.copy()
    lm[1] = lm[0]
    broken = Face(box=face.box, score=face.score, landmarks=lm)
    assert assess([broken], lambda f: sharp_chip).reason is Reason.NOT_FRONTAL


def test_blurred_chip_is_refused_and_sharpness_orders_blur(sharp_chip: np.ndarray) -> None:
    blurred = cv2.GaussianBlur(sharp_chip, (0, 0), 3.0)
    assert sharpness(blurred) < sharpness(sharp_chip) / 10
    verdict = assess([make_face(0, 0, 120)], lambda f: blurred)
    assert verdict.reason is Reason.BLURRY
    assert verdict.sharpness is not None and verdict.sharpness < QualityThresholds().min_sharpness


def test_chip_is_only_made_when_cheap_checks_pass(sharp_chip: np.ndarray) -> None:
    calls: list[Face] = []

    def chip_of(face: Face) -> np.ndarray:
        calls.append(face)
        return sharp_chip

    assess([make_face(0, 0, 30)], chip_of)
    assert calls == []
    assess([make_face(0, 0, 120)], chip_of)
    assert len(calls) == 1

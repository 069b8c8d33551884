"""The enrolment quality gate on synthetic faces and chips (seeded)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from faec_rec.faces.quality import (MOUTH, QualityThresholds, Reason, assess, choose_face, lip_colour, looks_real,
                                    mouth_edges, sharpness, tone_entropy, yaw)
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


def test_a_drawn_face_of_few_flat_tones_is_not_a_photo(sharp_chip: np.ndarray) -> None:
    drawn = (sharp_chip // 86) * 86  # 3 tones per channel: flat fills, as a cartoon's
    drawn = np.repeat(drawn[..., :1], 3, axis=2)  # the same in grey, so only the tones count
    assert tone_entropy(drawn) < 2.0 < 7.5 < tone_entropy(sharp_chip)
    verdict = assess([make_face(10, 10, 120)], lambda f: drawn)
    assert verdict.reason is Reason.NOT_A_PHOTO and "drawn" in verdict.detail


def test_a_covered_mouth_is_refused_and_the_rule_reads_the_mouth_only(sharp_chip: np.ndarray) -> None:
    (r0, r1), (c0, c1) = MOUTH
    masked = sharp_chip.copy()
    masked[int(r0 * 150):int(r1 * 150), int(c0 * 150):int(c1 * 150)] = (235, 235, 235)  # a white mask
    assert mouth_edges(masked) < 0.5 < 0.9 < mouth_edges(sharp_chip)
    verdict = assess([make_face(10, 10, 120)], lambda f: masked)
    assert verdict.reason is Reason.FACE_COVERED and "mouth is not visible" in verdict.detail
    # the same flat patch on the forehead leaves the mouth visible
    forehead = sharp_chip.copy()
    forehead[20:45, 50:100] = (235, 235, 235)
    assert looks_real(forehead)[0] is Reason.OK


def test_weak_mouth_edges_without_lip_colour_are_covered_but_only_in_colour(rng: np.random.Generator) -> None:
    """Between the two edge limits (0.5 and 0.8) the lips decide: a mouth region greener than
    the cheeks (a mask) is covered, the same edges with red lips are not, and a grey photo,
    with no colour to read, is judged on its edges alone."""
    (r0, r1), (c0, c1) = MOUTH
    mouth = (slice(int(r0 * 150), int(r1 * 150)), slice(int(c0 * 150), int(c1 * 150)))
    base = np.repeat(rng.integers(0, 256, size=(150, 150, 1)), 3, axis=2).astype(np.float32)
    base[mouth] = 128 + (base[mouth] - 128) * 0.6  # weaker mouth edges: about 0.67 of the face's
    base[..., 0] += 12  # a warm photo
    grey = np.repeat(base[..., 1:2], 3, axis=2).clip(0, 255).astype(np.uint8)
    masked, lips = base.copy(), base.copy()
    masked[mouth + (slice(1, 2),)] += 25  # green: no lip colour
    lips[mouth + (slice(0, 1),)] += 25  # red lips
    masked, lips = masked.clip(0, 255).astype(np.uint8), lips.clip(0, 255).astype(np.uint8)
    assert 0.5 < mouth_edges(masked) < 0.8 and lip_colour(masked) < 0 < lip_colour(lips)
    assert looks_real(masked)[0] is Reason.FACE_COVERED
    assert looks_real(lips)[0] is Reason.OK
    assert lip_colour(grey) is None and looks_real(grey)[0] is Reason.OK

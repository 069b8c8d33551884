"""Alignment maths on synthetic landmarks: the similarity fit and the chip it cuts."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from faec_rec.errors import ImageError
from faec_rec.faces.align import CHIP_SIZE, TEMPLATE_150, TEMPLATE_WEIGHTS, align, chip_transform, similarity_transform
from faec_rec.faces.types import Face


def _similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _invert(m: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]


@pytest.mark.parametrize("seed", range(5))
def test_known_similarity_is_recovered_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, 200, size=(5, 2))
    truth = _similarity(rng.uniform(-np.pi, np.pi), rng.uniform(0.2, 5.0), *rng.uniform(-100, 100, 2))
    m = similarity_transform(src, _apply(truth, src))
    np.testing.assert_allclose(m, truth, atol=1e-9)
    weighted = similarity_transform(src, _apply(truth, src), rng.uniform(0.1, 3.0, 5))
    np.testing.assert_allclose(weighted, truth, atol=1e-9)


def test_fit_is_least_squares_under_noise(rng: np.random.Generator) -> None:
    src = rng.uniform(0, 100, size=(50, 2))
    truth = _similarity(0.3, 1.7, 5.0, -8.0)
    dst = _apply(truth, src) + rng.normal(0, 0.5, size=src.shape)
    m = similarity_transform(src, dst)
    residual = ((_apply(m, src) - dst) ** 2).sum()
    truth_residual = ((_apply(truth, src) - dst) ** 2).sum()
    assert residual <= truth_residual + 1e-9  # the fit beats even the true transform on its data
    np.testing.assert_allclose(m[:, :2], truth[:, :2], atol=0.02)
    np.testing.assert_allclose(m[:, 2], truth[:, 2], atol=0.5)


def test_mirrored_points_never_give_a_reflection(rng: np.random.Generator) -> None:
    src = rng.uniform(0, 100, size=(5, 2))
    mirrored = src * np.array([-1.0, 1.0])
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_zero_weight_point_is_ignored(rng: np.random.Generator) -> None:
    src = rng.uniform(0, 100, size=(5, 2))
    truth = _similarity(-0.4, 0.8, 3.0, 4.0)
    dst = _apply(truth, src)
    dst[2] += 40.0  # an outlier with no weight
    m = similarity_transform(src, dst, np.array([1.0, 1.0, 0.0, 1.0, 1.0]))
    np.testing.assert_allclose(m, truth, atol=1e-9)


def test_degenerate_or_bad_landmarks_raise() -> None:
    with pytest.raises(ImageError, match="coincide"):
        similarity_transform(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ImageError, match="NaN"):
        similarity_transform(np.full((5, 2), np.nan), np.zeros((5, 2)))
    with pytest.raises(ImageError, match="matching"):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))


def test_template_is_a_plausible_face() -> None:
    eyes, nose, mouth = TEMPLATE_150[:2], TEMPLATE_150[2], TEMPLATE_150[3:]
    assert eyes[0, 0] < eyes[1, 0] and mouth[0, 0] < mouth[1, 0]  # image-left before image-right
    assert eyes[:, 1].max() < nose[1] < mouth[:, 1].min()  # eyes above nose above mouth
    assert np.all((TEMPLATE_150 > 0) & (TEMPLATE_150 < CHIP_SIZE))
    assert abs(eyes[:, 0].mean() - CHIP_SIZE / 2) < 5  # centred horizontally
    assert TEMPLATE_WEIGHTS.shape == (5,) and (TEMPLATE_WEIGHTS >= 0).all()


def test_face_in_template_position_maps_to_identity() -> None:
    m = chip_transform(TEMPLATE_150)
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    m300 = chip_transform(TEMPLATE_150, size=300)
    np.testing.assert_allclose(m300, [[2, 0, 0], [0, 2, 0]], atol=1e-9)


def test_align_undoes_a_known_similarity(rng: np.random.Generator) -> None:
    # A textured "chip", placed into a bigger image rotated/scaled/shifted; the face's
    # landmarks are the template carried along. Alignment must give the chip back.
    chip = cv2.GaussianBlur(rng.integers(0, 256, size=(CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8), (0, 0), 2.0)
    to_image = _similarity(0.35, 1.6, 120.0, 60.0)
    image = cv2.warpAffine(chip, to_image, (480, 400), flags=cv2.INTER_CUBIC)
    landmarks = _apply(to_image, TEMPLATE_150).astype(np.float32)
    face = Face(box=np.array([0, 0, 1, 1], np.float32), score=0.9, landmarks=landmarks)
    out = align(image, [face, face])
    assert out.shape == (2, CHIP_SIZE, CHIP_SIZE, 3) and out.dtype == np.uint8
    inner = (slice(10, -10), slice(10, -10))
    diff = np.abs(out[0][inner].astype(int) - chip[inner].astype(int)).mean()
    assert diff < 4.0
    # a different similarity would not match
    wrong = Face(box=face.box, score=0.9, landmarks=_apply(_similarity(0.0, 1.6, 120.0, 60.0), TEMPLATE_150).astype(np.float32))
    assert np.abs(align(image, [wrong])[0][inner].astype(int) - chip[inner].astype(int)).mean() > 10


def test_align_with_no_faces_and_custom_size(rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, size=(50, 60, 3), dtype=np.uint8)
    assert align(image, []).shape == (0, CHIP_SIZE, CHIP_SIZE, 3)
    face = Face(box=np.zeros(4, np.float32), score=1.0, landmarks=(TEMPLATE_150 / 3).astype(np.float32))
    assert align(image, [face], size=112).shape == (1, 112, 112, 3)


def test_align_refuses_non_images() -> None:
    face = Face(box=np.zeros(4, np.float32), score=1.0, landmarks=TEMPLATE_150.astype(np.float32))
    with pytest.raises(ImageError):
        align(np.zeros((10, 10), np.uint8), [face])
    with pytest.raises(ImageError):
        align(np.zeros((10, 10, 3), np.float32), [face])

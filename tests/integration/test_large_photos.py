"""Medium faces in large photos are found (issue 17, item 17): a real face pasted at 150 px
into a 6000x4000 canvas and at 350 px into a 20000x1300 panorama."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from faec_rec.config import FacesConfig
from faec_rec.faces.blazeface import box_iou
from faec_rec.faces.detect import make_detector, tile_starts, work_scale
from faec_rec.faces.image import load_image

pytestmark = pytest.mark.slow


def _canvas(photo: np.ndarray, face_box: np.ndarray, face_px: int, size: tuple[int, int], at: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``photo`` scaled so its face is ``face_px`` wide, pasted at ``at`` into a grey (w, h) canvas."""
    k = face_px / float(face_box[2] - face_box[0])
    scaled = cv2.resize(photo, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    w, h = size
    canvas = np.full((h, w, 3), 118, np.uint8)
    x0, y0 = at
    ph, pw = min(scaled.shape[0], h - y0), min(scaled.shape[1], w - x0)
    canvas[y0 : y0 + ph, x0 : x0 + pw] = scaled[:ph, :pw]
    return canvas, face_box * k + np.array([x0, y0, x0, y0], np.float32)


@pytest.fixture(scope="module")
def photo(faces_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    image = load_image(faces_dir / "samples" / "face_recognition_examples" / "obama" / "obama.jpg")
    faces = make_detector(FacesConfig()).detect(image)
    assert len(faces) == 1
    return image, faces[0].box


@pytest.mark.parametrize(("size", "face_px", "at"), [((6000, 4000), 150, (3900, 2500)), ((20000, 1300), 350, (13000, 200))])
def test_a_medium_face_in_a_large_photo_is_found(photo, size, face_px, at) -> None:
    canvas, want = _canvas(*photo, face_px, size, at)
    found = make_detector(FacesConfig()).detect(canvas)
    assert found, f"no face found in {size[0]}x{size[1]}"
    ious = box_iou(want, np.stack([f.box for f in found]))
    assert ious.max() > 0.5, (want, [f.box for f in found])
    # the old rule (downscale to detect_max_side only) misses it: the test can fail
    old = make_detector(FacesConfig(detect_max_pixels=0)).detect(canvas)
    assert not old or box_iou(want, np.stack([f.box for f in old])).max() <= 0.5


def test_tiles_cover_every_pixel_with_the_overlap() -> None:
    for length in (1, 300, 768, 769, 1500, 4760):
        starts = tile_starts(length, 768, 128)
        assert starts[0] == 0 and min(length, starts[-1] + 768) == length
        assert all(b - a <= 768 - 128 for a, b in zip(starts, starts[1:]))
    assert work_scale(640, 480, 1280, 2_500_000) == 1.0
    assert work_scale(6000, 4000, 1280, 2_500_000) == pytest.approx((2.5e6 / 24e6) ** 0.5)
    assert work_scale(6000, 4000, 1280, 0) == pytest.approx(1280 / 6000)

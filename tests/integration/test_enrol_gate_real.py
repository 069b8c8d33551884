"""The enrolment gate on real hard cases (issue 17 item 24), skipped where the face data is absent."""
from __future__ import annotations

from pathlib import Path

import pytest

from faec_rec.faces import FaceEngine, load_image
from faec_rec.faces.quality import Reason, assess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine() -> FaceEngine:
    return FaceEngine()


def _verdict(engine: FaceEngine, path: Path):
    if not path.is_file():
        pytest.skip(f"missing {path}")
    image = load_image(path)
    return assess(engine.detect(image), lambda f: engine.align(image, [f])[0])


def test_a_motion_blurred_large_face_is_refused_as_blurry(engine: FaceEngine, faces_dir: Path) -> None:
    verdict = _verdict(engine, faces_dir / "hard_cases" / "inspireface__blur.jpg")
    assert verdict.reason is Reason.BLURRY, verdict
    assert verdict.face_px > 200 and 15 < verdict.sharpness < 40  # passed the small-face limit of 15 before


def test_sharp_large_faces_still_pass(engine: FaceEngine, faces_dir: Path) -> None:
    folder = faces_dir / "samples" / "deepface_unit"
    photos = sorted(folder.glob("*/*.jpg"))[:12]
    if not photos:
        pytest.skip("samples/deepface_unit missing")
    verdicts = [_verdict(engine, p) for p in photos]
    assert sum(v.reason is Reason.BLURRY for v in verdicts) == 0, [(p.name, v.detail) for p, v in zip(photos, verdicts)]
    assert sum(v.accepted and v.face_px > 200 for v in verdicts) >= 6

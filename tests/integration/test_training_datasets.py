"""Dataset features through the REAL face engine on real photos, then from the cache alone."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from faec_rec.training.datasets import extract_features, scan_tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PEOPLE = ("Tony_Blair", "Jean_Chretien", "Wen_Jiabao")


class _NoEngine:
    """Fails the test if anything reaches the engine: the cache must answer."""

    backbone_version = "dlib-resnet-v1"
    flip_average = True

    def analyse(self, image):  # noqa: ANN001, ANN201
        raise AssertionError("engine called although every image is cached")

    features = analyse


def test_real_faces_are_embedded_once_then_read_from_the_cache(tmp_path: Path, faces_dir: Path) -> None:
    from faec_rec.faces.engine import FaceEngine

    root = tmp_path / "people"
    for person in PEOPLE:
        (root / person).mkdir(parents=True)
        for photo in sorted((faces_dir / "lfw" / person).glob("*.jpg"))[:3]:
            shutil.copy(photo, root / person / photo.name)
    (root / "Nobody").mkdir()
    shutil.copy(next((faces_dir / "no_face").iterdir()), root / "Nobody" / "landscape.jpg")
    (root / "Nobody" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

    files = scan_tree(root)
    engine = FaceEngine()
    fs = extract_features(files, engine, tmp_path / "cache", keep_crops=True)
    assert fs.features.shape == (9, 128)
    assert fs.crops is not None and fs.crops.shape == (9, 150, 150, 3)
    assert fs.report.unreadable == {"Nobody": 1}
    assert fs.report.no_face.get("Nobody") == 1
    # same person closer than different people, by cosine of the raw features
    unit = fs.features / np.linalg.norm(fs.features, axis=1, keepdims=True)
    sims = unit @ unit.T
    same = fs.labels[:, None] == fs.labels[None, :]
    off = ~np.eye(len(unit), dtype=bool)
    assert sims[same & off].mean() > sims[~same].mean() + 0.1

    again = extract_features(files, _NoEngine(), tmp_path / "cache")
    np.testing.assert_allclose(again.features, fs.features)
    assert again.report.to_json() == fs.report.to_json()

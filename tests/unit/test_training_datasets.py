"""Labelled folder trees: bad input says what is wrong, identity splits never overlap,
drops are reported per folder, features are cached by file hash."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from faec_rec.errors import TrainingError
from faec_rec.faces.types import Face
from faec_rec.training.datasets import extract_features, read_tight_crops, scan_tree, split_identities


def _png(path: Path, value: int, size: tuple[int, int] = (40, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((*size, 3), value, np.uint8)
    img[5:15, 5:15] = 255 - value  # not a flat image
    cv2.imwrite(str(path), img)


def test_empty_and_one_person_datasets_are_refused(tmp_path: Path):
    with pytest.raises(TrainingError, match="does not exist"):
        scan_tree(tmp_path / "missing")
    (tmp_path / "empty" / "alice").mkdir(parents=True)
    with pytest.raises(TrainingError, match="holds no images"):
        scan_tree(tmp_path / "empty")
    _png(tmp_path / "one" / "alice" / "a.png", 10)
    _png(tmp_path / "one" / "alice" / "b.png", 20)
    with pytest.raises(TrainingError, match="at least 2 people"):
        scan_tree(tmp_path / "one")


def test_single_image_people_are_named_as_enrolment_only(tmp_path: Path):
    for name, n in (("alice", 3), ("bob", 1), ("carol", 2)):
        for i in range(n):
            _png(tmp_path / name / f"{i}.png", 30 * i + 10)
    (tmp_path / "alice" / "notes.txt").write_text("not an image")
    files = scan_tree(tmp_path)
    assert files.names == ["alice", "bob", "carol"]
    assert len(files) == 6
    assert files.single_image_people() == ["bob"]


def test_identity_splits_are_disjoint_and_cover_every_group():
    groups = np.repeat([0, 1, 2], [30, 20, 10])
    train, val, test = split_identities(60, (0.6, 0.2, 0.2), seed=4, groups=groups)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(60))
    for split in (train, val, test):
        assert set(groups[split]) == {0, 1, 2}
    again = split_identities(60, (0.6, 0.2, 0.2), seed=4, groups=groups)
    assert all((a == b).all() for a, b in zip(again, (train, val, test)))
    with pytest.raises(TrainingError, match="sum to 1"):
        split_identities(10, (0.5, 0.2))


def test_tight_crops_skip_corrupt_images_and_keep_sets_apart(tmp_path: Path):
    for s in ("setA", "setB"):
        for p in ("s1", "s2"):
            for i in range(2):
                _png(tmp_path / s / p / f"{i}.png", 40 * i + 20, size=(60, 50))
    (tmp_path / "setA" / "s1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    crops = read_tight_crops([tmp_path / "setA", tmp_path / "setB"], size=(24, 20))
    assert crops.images.shape == (8, 24, 20)
    assert crops.names == ["setA/s1", "setA/s2", "setB/s1", "setB/s2"]
    assert crops.group_names == ["setA", "setB"]
    assert crops.dropped == {"setA/s1": 1}
    assert crops.identity_groups().tolist() == [0, 0, 1, 1]


@dataclass
class _Analysed:
    face: Face
    crop: np.ndarray
    features: np.ndarray


class FakeEngine:
    """Stands in for FaceEngine in unit tests: the number of faces is coded in
    the image's top-left pixel (0 = none, 2 = two), features from the pixel values."""

    backbone_version = "fake-v1"

    def __init__(self) -> None:
        self.calls = 0

    def _features(self, image: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(int(image.mean() * 1000))
        return rng.normal(size=128).astype(np.float32)

    def analyse(self, image: np.ndarray) -> list[_Analysed]:
        self.calls += 1
        n = {0: 0, 2: 2}.get(int(image[0, 0, 0]), 1)
        out = []
        for k in range(n):
            box = np.array([k * 10, 0, k * 10 + 8, 8], np.float32)
            out.append(_Analysed(Face(box, 0.9, np.zeros((5, 2), np.float32)),
                                 np.zeros((150, 150, 3), np.uint8), self._features(image) + k))
        return out

    def features(self, crops: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.stack([self._features(c) for c in crops])


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "people"
    for p, values in (("ann", [10, 11, 0]), ("ben", [20, 2, 21]), ("cat", [30])):
        for i, v in enumerate(values):
            _png(root / p / f"{i}.png", v)
    (root / "ann" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return root


def test_extract_features_reports_drops_per_folder_and_caches(tmp_path: Path):
    files = scan_tree(_tree(tmp_path))
    engine = FakeEngine()
    fs = extract_features(files, engine, tmp_path / "cache")
    assert fs.features.shape == (5, 128)
    assert fs.report.no_face == {"ann": 1}
    assert fs.report.several_faces == {"ben": 1}
    assert fs.report.unreadable == {"ann": 1}
    assert fs.report.single_image == ["cat"]
    lines = "\n".join(fs.report.lines())
    assert "ann: dropped 1 unreadable, 1 without a face" in lines and "enrolment only" in lines
    calls = engine.calls
    again = extract_features(files, engine, tmp_path / "cache")
    assert engine.calls == calls  # every image answered from the cache, drops included
    np.testing.assert_array_equal(again.features, fs.features)
    assert again.report.to_json() == fs.report.to_json()


def test_several_faces_can_take_the_central_one(tmp_path: Path):
    files = scan_tree(_tree(tmp_path))
    fs = extract_features(files, FakeEngine(), None, several="central")
    assert fs.report.several_faces == {}
    assert fs.features.shape == (6, 128)


def test_a_folder_with_no_faces_is_a_clear_error(tmp_path: Path):
    root = tmp_path / "blank"
    for p in ("x", "y"):
        _png(root / p / "0.png", 0)
    with pytest.raises(TrainingError, match="no usable face in 2 images"):
        extract_features(scan_tree(root), FakeEngine(), None)

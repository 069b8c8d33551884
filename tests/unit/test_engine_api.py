"""FaceEngine and the module-level verbs: contracts, batching, laziness.

The detector and embedder are replaced by small deterministic stand-ins so the
API's own behaviour (which faces go in which batch, in which order, with which
chip) is checked without running the networks; the real models are exercised in
tests/integration/test_faces_real.py.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from faec_rec.config import FacesConfig
from faec_rec.errors import ConfigError, ImageError
from faec_rec.faces import AnalysedFace, Face, FaceEngine
from faec_rec.faces.align import TEMPLATE_150
from faec_rec.faces.detect import BlazeFaceDetector, make_detector


class TemplateDetector:
    """Finds ``count[id]`` faces in an image whose pixel (0, 0, 0) is ``id``; scores descending."""

    def __init__(self, counts: dict[int, int]) -> None:
        self.counts = counts

    def detect(self, image: np.ndarray) -> list[Face]:
        n = self.counts[int(image[0, 0, 0])]
        return [
            Face(box=np.array([0, 0, 150, 150], np.float32), score=1.0 - 0.1 * k, landmarks=(TEMPLATE_150 + 3 * k).astype(np.float32))
            for k in range(n)
        ]


class MeanEmbedder:
    """Feature i = the mean of chip i repeated 128 times; records batch sizes."""

    backbone_version = "test-v0"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def features(self, crops: np.ndarray) -> np.ndarray:
        self.calls.append(len(crops))
        return np.repeat(crops.reshape(len(crops), -1).mean(1, keepdims=True), 128, axis=1).astype(np.float32)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        f = self.features(crops)
        return f / np.linalg.norm(f, axis=1, keepdims=True)


def _image(tag: int, rng: np.random.Generator) -> np.ndarray:
    image = rng.integers(1, 256, size=(200, 220, 3), dtype=np.uint8)
    image[0, 0, 0] = tag
    return image


def test_analyse_many_embeds_every_face_in_one_batch(rng: np.random.Generator) -> None:
    embedder = MeanEmbedder()
    engine = FaceEngine(detector=TemplateDetector({1: 2, 2: 0, 3: 1}), embedder=embedder)
    images = [_image(1, rng), _image(2, rng), _image(3, rng)]
    result = engine.analyse_many(images)
    assert embedder.calls == [3]
    assert [len(r) for r in result] == [2, 0, 1]
    for image, faces in zip(images, result):
        chips = engine.align(image, [a.face for a in faces])
        for a, chip in zip(faces, chips):
            assert isinstance(a, AnalysedFace)
            assert a.crop.shape == (150, 150, 3) and a.crop.dtype == np.uint8
            np.testing.assert_array_equal(a.crop, chip)  # each face keeps its own chip and order
            assert a.features.shape == (128,) and a.features.dtype == np.float32
            assert a.features[0] == pytest.approx(chip.mean(), rel=1e-5)
    assert result[0][0].face.score > result[0][1].face.score


def test_analyse_one_image_and_no_faces(rng: np.random.Generator) -> None:
    embedder = MeanEmbedder()
    engine = FaceEngine(detector=TemplateDetector({4: 3, 5: 0}), embedder=embedder)
    assert len(engine.analyse(_image(4, rng))) == 3
    assert engine.analyse(_image(5, rng)) == []
    assert engine.analyse_many([]) == []
    assert embedder.calls == [3]  # nothing embedded when there is no face


def test_engine_stages_compose(rng: np.random.Generator) -> None:
    engine = FaceEngine(detector=TemplateDetector({6: 2}), embedder=MeanEmbedder())
    image = _image(6, rng)
    faces = engine.detect(image)
    chips = engine.align(image, faces)
    assert chips.shape == (2, 150, 150, 3)
    vectors = engine.embed(chips)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    assert engine.features(chips).shape == (2, 128)
    assert engine.backbone_version == "test-v0"


def test_bad_images_raise_image_error_before_any_work() -> None:
    embedder = MeanEmbedder()
    engine = FaceEngine(detector=TemplateDetector({}), embedder=embedder)
    for bad in (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 4), np.uint8), "img.jpg"):
        with pytest.raises(ImageError, match="uint8 RGB"):
            engine.analyse_many([bad])  # type: ignore[list-item]
    assert embedder.calls == []


def test_real_detector_rejects_bad_arrays_and_handles_tiny_images() -> None:
    detector = BlazeFaceDetector()
    with pytest.raises(ImageError):
        detector.detect(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageError):
        detector.detect(np.zeros((5, 5), np.uint8))


def test_make_detector_names_valid_values() -> None:
    assert isinstance(make_detector(FacesConfig()), BlazeFaceDetector)
    d = make_detector(FacesConfig(min_face_px=60, score_threshold=0.7, detect_max_side=640))
    assert (d.min_face_px, d.score_threshold, d.max_side) == (60, 0.7, 640)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="blazeface"):
        make_detector(FacesConfig(detector="haar"))


def test_engine_creates_nothing_until_used() -> None:
    engine = FaceEngine(FacesConfig(detector="nonexistent"))
    with pytest.raises(ConfigError):  # the bad detector name surfaces on first use, not before
        engine.detector  # noqa: B018


def test_importing_the_api_loads_no_model_framework() -> None:
    code = (
        "import sys, faec_rec.faces as f; "
        "f.FaceEngine(); "
        "print(int(any(m in sys.modules for m in ('tensorflow', 'keras'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "0"


def test_module_level_verbs_share_one_default_engine() -> None:
    import faec_rec.faces as faces

    import importlib

    assert faces.default_engine() is faces.default_engine()
    # loading the submodules named like the verbs must not replace the verbs
    for name in ("align", "detect", "embed", "engine", "image", "blazeface"):
        importlib.import_module(f"faec_rec.faces.{name}")
    for name in ("detect", "align", "embed"):
        verb = getattr(faces, name)
        assert callable(verb) and verb.__module__ == "faec_rec.faces", name
    assert isinstance(faces.Face, type) and isinstance(faces.FaceEngine, type) and callable(faces.load_image)

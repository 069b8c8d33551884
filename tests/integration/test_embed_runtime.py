"""What runs in the worker gives the Keras model's descriptors (frozen graph, any batch size)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from faec_rec.faces import FaceEngine


@pytest.fixture(scope="module")
def chips(faces_dir: Path) -> np.ndarray:
    engine = FaceEngine()
    out = []
    for path in sorted((faces_dir / "lfw").glob("*/*.jpg"))[:24]:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        faces = engine.detect(image)
        if faces:
            out.append(engine.align(image, faces[:1])[0])
    assert len(out) >= 16
    return np.stack(out)


def _keras_flip(model, chips: np.ndarray) -> np.ndarray:
    x = chips.astype(np.float32)
    both = np.asarray(model(np.concatenate([x, x[:, :, ::-1]]), training=False))
    n = len(chips)
    return (both[:n] + both[n:]) / 2


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_frozen_runtime_matches_keras_at_batch_1_and_32(chips: np.ndarray, precision: str) -> None:
    from faec_rec.faces.embed import Embedder

    embedder = Embedder(precision=precision)
    reference = _keras_flip(embedder.model, chips)  # the trained Keras model, called directly
    batched = embedder.features(chips)
    singles = np.concatenate([embedder.features(chips[i : i + 1]) for i in range(len(chips))])
    assert _cos(batched, reference).min() >= 0.9999
    assert _cos(singles, reference).min() >= 0.9999
    if precision == "float32":
        np.testing.assert_allclose(singles, reference, atol=1e-4)


def test_frozen_graph_is_cached_and_a_corrupt_cache_is_rebuilt(chips: np.ndarray, tmp_path: Path) -> None:
    from faec_rec.faces.embed import Embedder

    first = Embedder(cache_dir=tmp_path)
    want = first.features(chips[:4])
    (graph,) = tmp_path.glob("*.pb")
    cold = Embedder(cache_dir=tmp_path)
    got = cold.features(chips[:4])
    assert cold._model is None, "a cached graph must start without loading the Keras model"
    np.testing.assert_array_equal(got, want)
    graph.write_bytes(graph.read_bytes()[:-100] + b"x" * 100)  # same size, wrong bytes
    rebuilt = Embedder(cache_dir=tmp_path)
    np.testing.assert_array_equal(rebuilt.features(chips[:4]), want)
    assert rebuilt._model is not None  # rebuilt from the Keras model, cache rewritten
    assert Embedder(cache_dir=tmp_path).features(chips[:1]).shape == (1, 128)

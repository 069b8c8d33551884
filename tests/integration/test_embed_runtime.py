"""What runs in the worker gives the Keras model's descriptors (LiteRT or the frozen graph, any batch size)."""
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


@pytest.mark.parametrize(("precision", "runtime"), [("float32", "litert"), ("float32", "tensorflow"), ("bfloat16", "tensorflow")])
def test_every_runtime_matches_keras_at_batch_1_and_32(chips: np.ndarray, precision: str, runtime: str) -> None:
    from faec_rec.faces.embed import Embedder

    embedder = Embedder(precision=precision, runtime=runtime)
    assert embedder.runtime == runtime
    reference = _keras_flip(embedder.model, chips)  # the trained Keras model, called directly
    batched = embedder.features(chips)
    singles = np.concatenate([embedder.features(chips[i : i + 1]) for i in range(len(chips))])
    assert _cos(batched, reference).min() >= 0.9999
    assert _cos(singles, reference).min() >= 0.9999
    if precision == "float32":
        np.testing.assert_allclose(singles, reference, atol=1e-4)


@pytest.mark.parametrize(("runtime", "suffix"), [("tensorflow", "*.pb"), ("litert", "*.tflite")])
def test_converted_model_is_cached_and_a_corrupt_cache_is_rebuilt(chips: np.ndarray, tmp_path: Path, runtime: str, suffix: str) -> None:
    from faec_rec.faces.embed import Embedder

    first = Embedder(cache_dir=tmp_path, precision="float32", runtime=runtime)
    want = first.features(chips[:4])
    (cached,) = tmp_path.glob(suffix)
    cold = Embedder(cache_dir=tmp_path, precision="float32", runtime=runtime)
    got = cold.features(chips[:4])
    assert cold._model is None, "a cached model must start without loading the Keras model"
    np.testing.assert_array_equal(got, want)
    cached.write_bytes(cached.read_bytes()[:-100] + b"x" * 100)  # same size, wrong bytes
    rebuilt = Embedder(cache_dir=tmp_path, precision="float32", runtime=runtime)
    np.testing.assert_array_equal(rebuilt.features(chips[:4]), want)
    assert rebuilt._model is not None  # rebuilt from the Keras model, cache rewritten
    assert Embedder(cache_dir=tmp_path, precision="float32", runtime=runtime).features(chips[:1]).shape == (1, 128)


def test_litert_cold_start_imports_no_tensorflow(chips: np.ndarray, tmp_path: Path) -> None:
    """With the LiteRT model cached, a fresh process detects and embeds without TensorFlow
    (the ~3-4 s import a cold ``faec-rec identify`` no longer pays), with the same descriptors."""
    import os
    import subprocess
    import sys

    from faec_rec.faces.embed import Embedder

    want = Embedder(cache_dir=tmp_path, precision="float32", runtime="litert").features(chips[:3])
    np.save(tmp_path / "chips.npy", chips[:3])
    code = (
        "import sys, numpy as np; from pathlib import Path;"
        "from faec_rec.faces import FaceEngine; from faec_rec.config import FacesConfig;"
        f"e = FaceEngine(FacesConfig(precision='float32'), cache_dir=Path({str(tmp_path)!r}));"
        "e.detect(np.zeros((240, 320, 3), np.uint8));"
        f"np.save({str(tmp_path / 'got.npy')!r}, e.features(np.load({str(tmp_path / 'chips.npy')!r})));"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    env = dict(os.environ, FAEC_QUIET_TF="1")  # as the CLI runs: native chatter kept off the terminal
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["False", "False"]
    assert "XNNPACK" not in run.stderr  # LiteRT's delegate line stays off the terminal
    np.testing.assert_array_equal(np.load(tmp_path / "got.npy"), want)


def test_litert_is_refused_for_bfloat16() -> None:
    from faec_rec.errors import VectorError
    from faec_rec.faces.embed import Embedder

    with pytest.raises(VectorError, match="float32 only"):
        Embedder(precision="bfloat16", runtime="litert")
    assert Embedder(precision="bfloat16").runtime == "tensorflow"  # auto: the TensorFlow graph
    assert Embedder(precision="float32").runtime == "litert"

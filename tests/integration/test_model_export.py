"""The exported model (backbone + projection in one file) gives the engine's embeddings."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from faec_rec.faces import FaceEngine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chips(faces_dir: Path) -> np.ndarray:
    engine = FaceEngine()
    out = []
    for path in sorted((faces_dir / "lfw").glob("*/*.jpg"))[:10]:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        faces = engine.detect(image)
        if faces:
            out.append(engine.align(image, faces[:1])[0])
    return np.stack(out)


def _head_projector():
    """A small comparison head with random weights, as the registry would hand one over."""
    from types import SimpleNamespace

    rng = np.random.default_rng(3)
    p = SimpleNamespace(version="h-test", threshold=0.5)
    p._w1, p._b1 = rng.normal(0, 0.1, (128, 64)).astype(np.float32), rng.normal(0, 0.1, 64).astype(np.float32)
    p._w2, p._b2 = rng.normal(0, 0.1, (64, 128)).astype(np.float32), rng.normal(0, 0.1, 128).astype(np.float32)

    def project(features: np.ndarray) -> np.ndarray:
        x = features / np.linalg.norm(features, axis=1, keepdims=True)
        y = x + np.maximum(x @ p._w1 + p._b1, 0) @ p._w2 + p._b2
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    p.project = project
    return p


@pytest.mark.parametrize("fmt", ["tflite", "savedmodel"])
def test_export_matches_the_engine_and_loads_without_faec_rec(chips: np.ndarray, tmp_path: Path, fmt: str) -> None:
    from faec_rec.faces.embed import Embedder
    from faec_rec.faces.export import export_model
    from faec_rec.index.projection import BaseProjector

    features = Embedder(precision="float32").features(chips)
    for projector in (BaseProjector(), _head_projector()):
        out = tmp_path / f"{fmt}-{projector.version}"
        card = export_model(projector.version, fmt, out, projector)
        assert card["output"]["embedding_size"] == 128 and card["input"]["width"] == 150
        assert json.loads((out / "model_card.json").read_text())["version"] == projector.version
        want = projector.project(features)
        # load it the way an app would: the example's own loader, in a process without faec_rec on its path
        np.save(tmp_path / "chips.npy", chips)
        code = (f"import sys; sys.path.insert(0, {str(out)!r}); import numpy as np, example; "
                f"np.save({str(tmp_path / 'got.npy')!r}, example.load()(np.load({str(tmp_path / 'chips.npy')!r})))")
        run = subprocess.run([sys.executable, "-I", "-c", code], cwd=out, timeout=300, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        got = np.load(tmp_path / "got.npy")
        assert got.shape == want.shape
        assert ((got * want).sum(1)).min() >= 0.9999, projector

"""A worker process's runtime follows the model registry: a new current version is
hot-swapped before the next batch; a version that cannot be loaded keeps the old one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faec_rec.config import load_settings
from faec_rec.index.projection import normalise
from faec_rec.workers import runtime as rt

pytestmark = pytest.mark.integration


class ScaledProjector:
    """A stand-in trained head: flips the sign of half the dimensions, then normalises."""

    version = "test-2"

    def project(self, features: np.ndarray) -> np.ndarray:
        signs = np.where(np.arange(features.shape[1]) % 2 == 0, 1.0, -1.0).astype(np.float32)
        return normalise(features * signs)


@pytest.fixture
def runtime(redis_url: str, prefix: str, tmp_path: Path, redis_client):  # noqa: ANN001 (fixture)
    r = rt.Runtime(load_settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path))
    yield r
    r.close()


def test_refresh_swaps_to_the_registry_version_and_fails_safe(runtime: rt.Runtime, rng: np.random.Generator,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    features = rng.normal(size=(3, 128)).astype(np.float32)
    runtime.gallery.enrol("Ada", features[:1], sources=["a.jpg"], content_hashes=["h1"])
    runtime.refresh()
    assert runtime.gallery.version == "base"

    # A version the registry cannot load (no such model): keep serving "base".
    runtime.redis.set(runtime.keys.model_current(), "head-404")
    runtime.refresh()
    assert runtime.gallery.version == "base"
    assert runtime.gallery.identify_features(features[:1])[0].name == "Ada"

    # A loadable version: swapped in, and the gallery answers in the new version.
    real = rt.load_projector

    def loader(version: str, settings, redis):  # noqa: ANN001 (same signature as the seam)
        return ScaledProjector() if version == "test-2" else real(version, settings, redis)

    monkeypatch.setattr(rt, "load_projector", loader)
    runtime.redis.set(runtime.keys.model_current(), "test-2")
    runtime.refresh()
    assert runtime.gallery.version == "test-2"
    query = ScaledProjector().project(features[:1])
    match = runtime.gallery.identify(query, "test-2")[0]
    assert match.name == "Ada" and match.score == pytest.approx(1.0, abs=1e-5)

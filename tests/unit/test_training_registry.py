"""Model registry on a real Redis: round trip, checksums, promote/rollback events."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faec_rec.errors import ModelError
from faec_rec.training.head import HeadProjector, HeadTrainConfig, build_head, train_head
from faec_rec.training.registry import ModelRegistry, Status, load_projector


@pytest.fixture
def registry(redis_client, keys, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(redis_client, keys, tmp_path / "models")


def _trained(rng: np.random.Generator):
    labels = np.repeat(np.arange(8), 4)
    feats = (rng.normal(size=(8, 128))[labels] + rng.normal(size=(32, 128)) * 0.5).astype(np.float32)
    return train_head(feats, labels, HeadTrainConfig(epochs=2, identities_per_batch=4, anchor_weight=0)).model, feats


def test_register_list_load_round_trip(registry, rng):
    model, feats = _trained(rng)
    rec = registry.register(model, metrics={"candidate_lfw_accuracy": 0.99}, parent="base", threshold=0.5, note="t")
    assert rec.version == "head-1"
    assert registry.register(build_head(), parent="head-1").version == "head-2"
    assert [r.version for r in registry.records()] == ["head-1", "head-2"]
    again = registry.record("head-1")
    assert again.metrics == {"candidate_lfw_accuracy": 0.99} and again.threshold == 0.5 and again.sha256 == rec.sha256
    projector = registry.load("head-1")
    np.testing.assert_allclose(projector.project(feats), HeadProjector(model, "x").project(feats), atol=1e-6)
    assert projector.version == "head-1" and projector.threshold == 0.5
    assert registry.load("base").version == "base"


def test_a_tampered_file_is_refused_and_the_current_version_stays(registry, rng):
    model, _ = _trained(rng)
    rec = registry.register(model)
    registry.promote(rec.version)
    other = registry.register(build_head())
    path = registry.path(other)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        registry.load(other.version)
    with pytest.raises(ModelError, match="checksum"):
        registry.promote(other.version)
    assert registry.current() == rec.version
    path.unlink()
    with pytest.raises(ModelError, match="missing"):
        registry.verify(other.version)


def test_promote_and_rollback_publish_events(registry, rng, redis_client, keys):
    a = registry.register(build_head()).version
    b = registry.register(build_head()).version
    assert registry.current() == "base"
    registry.promote(a, reason="first")
    registry.promote(b, reason="second")
    assert registry.current() == b
    assert registry.record(b).status == Status.PROMOTED
    event = registry.rollback(reason="oops")
    assert event["version"] == a and event["previous"] == b
    assert registry.current() == a
    assert registry.record(b).status == Status.RETIRED
    registry.rollback()
    assert registry.current() == "base"
    with pytest.raises(ModelError, match="nothing to roll back"):
        registry.rollback()
    kinds = [(e["type"], e["version"], e["previous"]) for e in registry.events()]
    assert kinds == [("promote", a, "base"), ("promote", b, a), ("rollback", a, b), ("rollback", "base", a)]
    assert redis_client.xlen(keys.model_events()) == 4


def test_unknown_version_names_the_known_ones(registry):
    registry.register(build_head())
    with pytest.raises(ModelError, match="head-1"):
        registry.record("head-7")


def test_load_projector_for_workers(redis_client, keys, prefix, tmp_path, rng):
    from faec_rec.config import load_settings

    settings = load_settings(prefix=prefix, data_dir=tmp_path)
    reg = ModelRegistry.from_settings(settings, redis_client)
    version = reg.register(build_head()).version
    assert load_projector(version, settings=settings, redis=redis_client).version == version
    assert load_projector("base", settings=settings, redis=redis_client).version == "base"

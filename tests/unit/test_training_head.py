"""The comparison head: identity at start, training lowers the loss, safe-mode round trip."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faec_rec.errors import ModelError, TrainingError, VectorError
from faec_rec.training.head import (
    HeadProjector,
    HeadTrainConfig,
    batch_loss,
    build_head,
    load_head,
    save_head,
    train_head,
)


def clustered(rng: np.random.Generator, people: int = 40, per: int = 6, spread: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Raw features around per-person centres, with a shared offset like real descriptors."""
    centres = rng.normal(size=(people, 128))
    labels = np.repeat(np.arange(people), per)
    offset = rng.normal(size=128) * 2
    feats = offset + centres[labels] * 0.6 + rng.normal(size=(labels.size, 128)) * spread
    return (feats * 0.05).astype(np.float32), labels


def test_untrained_head_returns_the_normalised_features(rng):
    feats, _ = clustered(rng)
    base = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    head = build_head(seed=5)
    np.testing.assert_allclose(np.asarray(head(feats)), base, atol=1e-6)
    np.testing.assert_allclose(HeadProjector(head, "head-0").project(feats), base, atol=1e-6)


def test_training_lowers_the_metric_loss_and_numpy_matches_keras(rng):
    feats, labels = clustered(rng)
    cfg = HeadTrainConfig(loss="contrastive", epochs=6, identities_per_batch=8, images_per_identity=4, anchor_weight=0.0)
    before = batch_loss(build_head(), feats, labels, cfg)
    result = train_head(feats, labels, cfg)
    after = batch_loss(result.model, feats, labels, cfg)
    assert after < before * 0.8
    assert result.losses[-1] < result.losses[0]
    projector = HeadProjector(result.model, "head-1")
    out = projector.project(feats)
    np.testing.assert_allclose(out, np.asarray(result.model(feats)), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("loss", ["triplet", "amsoftmax"])
def test_other_losses_train_too(rng, loss):
    feats, labels = clustered(rng, people=20)
    cfg = HeadTrainConfig(loss=loss, epochs=3, identities_per_batch=8, images_per_identity=4)
    result = train_head(feats, labels, cfg)
    assert np.isfinite(result.losses).all()
    assert result.losses[-1] < result.losses[0]


def test_anchor_weight_keeps_the_head_near_the_base(rng):
    feats, labels = clustered(rng, people=20)
    base = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    drift = {}
    for w in (0.0, 50.0):
        cfg = HeadTrainConfig(epochs=4, identities_per_batch=8, anchor_weight=w)
        out = HeadProjector(train_head(feats, labels, cfg).model, "h").project(feats)
        drift[w] = float(np.mean(np.sum((out - base) ** 2, axis=1)))
    assert drift[50.0] < drift[0.0]


def test_save_and_reload_in_safe_mode(tmp_path: Path, rng):
    feats, labels = clustered(rng, people=10)
    model = train_head(feats, labels, HeadTrainConfig(epochs=1, identities_per_batch=4)).model
    path = save_head(model, tmp_path / "head-1.keras")
    loaded = load_head(path, "head-1")
    np.testing.assert_allclose(loaded.project(feats), HeadProjector(model, "head-1").project(feats), atol=1e-6)
    assert loaded.version == "head-1"


def test_load_refuses_a_damaged_or_missing_file(tmp_path: Path):
    with pytest.raises(ModelError, match="does not exist"):
        load_head(tmp_path / "nope.keras", "head-9")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="cannot load"):
        load_head(bad, "head-9")


def test_bad_features_and_options_say_what_is_wrong(rng):
    projector = HeadProjector(build_head(), "h")
    with pytest.raises(VectorError, match=r"\(n, 128\)"):
        projector.project(np.zeros((3, 64), np.float32))
    with pytest.raises(VectorError, match="all-zero"):
        projector.project(np.zeros((2, 128), np.float32))
    nan = np.ones((2, 128), np.float32)
    nan[1, 3] = np.nan
    with pytest.raises(VectorError, match="NaN"):
        projector.project(nan)
    with pytest.raises(TrainingError, match="unknown loss"):
        HeadTrainConfig(loss="hinge")
    with pytest.raises(TrainingError, match="at least 2 identities"):
        train_head(np.ones((4, 128), np.float32), np.zeros(4, int), HeadTrainConfig(epochs=1))

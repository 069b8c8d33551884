"""The scratch CNN's three ways on tiny synthetic grey images (seconds)."""
from __future__ import annotations

import numpy as np
import pytest

from faec_rec.errors import TrainingError
from faec_rec.training.datasets import CropSet
from faec_rec.training.scratch import ScratchConfig, score_way, train_scratch


def _crops(rng: np.random.Generator, people: int = 12, per: int = 8) -> CropSet:
    """Each person is a fixed random pattern; images add noise."""
    patterns = rng.integers(0, 256, size=(people, 16, 16))
    labels = np.repeat(np.arange(people), per)
    images = np.clip(patterns[labels] + rng.normal(0, 20, size=(labels.size, 16, 16)), 0, 255).astype(np.uint8)
    groups = (labels % 2).astype(np.int64)
    return CropSet(images, labels, [f"p{i}" for i in range(people)], groups, ["even", "odd"])


CFG = ScratchConfig(size=(16, 16), filters=(8, 16), embedding_dim=16, epochs=4, batch_size=16, head_epochs=3)


@pytest.mark.parametrize("way", ["classify", "joint"])
def test_each_way_lowers_its_loss(rng, way):
    result = train_scratch(_crops(rng), ScratchConfig(**{**CFG.__dict__, "way": way}))
    assert result.losses[-1] < result.losses[0]
    assert result.embed(_crops(rng).images[:5]).shape == (5, 16)


def test_sequential_freezes_the_cnn_and_adds_a_normalised_head(rng):
    crops = _crops(rng)
    classify = train_scratch(crops, ScratchConfig(**{**CFG.__dict__, "way": "classify"}))
    before = [w.copy() for w in classify.embedder.get_weights()]
    seq = train_scratch(crops, ScratchConfig(**{**CFG.__dict__, "way": "sequential"}), base=classify)
    assert seq.embedder is classify.embedder
    for a, b in zip(before, classify.embedder.get_weights()):
        np.testing.assert_array_equal(a, b)
    out = seq.embed(crops.images[:6])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    score = score_way(seq, crops, crops, n_pairs=200)
    assert 0.0 <= score.test.tar <= 1.0 and 0.0 <= score.test.trr <= 1.0


def test_unknown_way_and_one_identity_are_refused(rng):
    with pytest.raises(TrainingError, match="unknown way"):
        ScratchConfig(way="both")
    crops = _crops(rng, people=1)
    with pytest.raises(TrainingError, match="at least 2 identities"):
        train_scratch(crops, CFG)

"""P x K balanced batches: balance, determinism, people with one image left out."""
from __future__ import annotations

import numpy as np
import pytest

from faec_rec.errors import TrainingError
from faec_rec.training.batches import BalancedBatches, pair_counts, usable_identities


def _labels(rng: np.random.Generator, people: int = 30) -> np.ndarray:
    counts = rng.integers(1, 12, size=people)
    return rng.permutation(np.repeat(np.arange(people), counts))


def test_every_batch_has_p_identities_with_k_images_each(rng):
    labels = _labels(rng)
    builder = BalancedBatches(labels, identities_per_batch=8, images_per_identity=4, seed=3)
    for epoch in range(3):
        for idx in builder.epoch(epoch):
            assert idx.shape == (32,)
            values, counts = np.unique(labels[idx], return_counts=True)
            assert values.size == 8
            assert (counts == 4).all()
            pos, neg = pair_counts(labels[idx])
            assert pos == 8 * 6  # 8 identities x C(4, 2)
            assert neg == 32 * 31 // 2 - pos


def test_identities_with_fewer_than_k_images_still_give_two_distinct_images(rng):
    labels = np.repeat(np.arange(10), 2)  # 2 images each, K = 4
    builder = BalancedBatches(labels, 4, 4, seed=0)
    for idx in builder.epoch(0):
        for value in np.unique(labels[idx]):
            rows = idx[labels[idx] == value]
            assert np.unique(rows).size == 2


def test_same_seed_same_batches_other_seed_other_batches(rng):
    labels = _labels(rng)
    a = BalancedBatches(labels, 8, 4, seed=1)
    b = BalancedBatches(labels, 8, 4, seed=1)
    c = BalancedBatches(labels, 8, 4, seed=2)
    first = [x.tolist() for x in a.epoch(0)]
    assert first == [x.tolist() for x in b.epoch(0)]
    assert first != [x.tolist() for x in c.epoch(0)]
    assert first != [x.tolist() for x in a.epoch(1)]


def test_single_image_people_never_appear(rng):
    labels = np.concatenate([np.repeat(np.arange(6), 5), np.arange(100, 110)])
    usable, single = usable_identities(labels)
    assert set(single) == set(range(100, 110))
    builder = BalancedBatches(labels, 4, 2, seed=0)
    seen = set()
    for epoch in range(5):
        for idx in builder.epoch(epoch):
            seen |= set(labels[idx].tolist())
    assert seen == set(range(6))


def test_an_epoch_covers_every_usable_identity(rng):
    labels = _labels(rng, people=50)
    builder = BalancedBatches(labels, 8, 4, seed=0)
    seen = set()
    for idx in builder.epoch(0):
        seen |= set(labels[idx].tolist())
    assert seen == set(builder.usable.tolist())


@pytest.mark.parametrize(
    "labels, match",
    [
        (np.array([], dtype=int), "non-empty"),
        (np.zeros(10, dtype=int), "at least 2 identities"),
        (np.arange(10), "single image"),
    ],
)
def test_too_little_data_says_why(labels, match):
    with pytest.raises(TrainingError, match=match):
        BalancedBatches(labels, 4, 4)


def test_p_and_k_below_two_are_refused():
    labels = np.repeat(np.arange(5), 4)
    with pytest.raises(TrainingError, match="identities_per_batch"):
        BalancedBatches(labels, 1, 4)
    with pytest.raises(TrainingError, match="images_per_identity"):
        BalancedBatches(labels, 4, 1)

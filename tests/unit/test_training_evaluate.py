"""Verification metrics against brute force on seeded scores; LFW pairs parsing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faec_rec.errors import TrainingError
from faec_rec.training.evaluate import (
    best_threshold,
    kfold_accuracy,
    lfw_accuracy,
    metrics_at,
    read_lfw_pairs,
    sample_pairs,
    tar_at_far,
)


def _scores(rng: np.random.Generator, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    same = rng.random(n) < 0.5
    scores = np.where(same, rng.normal(0.7, 0.1, n), rng.normal(0.4, 0.1, n))
    return scores, same


def test_best_threshold_matches_brute_force(rng):
    scores, same = _scores(rng)
    t = best_threshold(scores, same)
    brute = max(((scores >= c) == same).mean() for c in np.concatenate([scores, [scores.max() + 1]]))
    assert metrics_at(scores, same, t).accuracy == pytest.approx(brute)


def test_tar_and_trr_are_reported_separately():
    scores = np.array([0.9, 0.8, 0.2, 0.1, 0.85, 0.3])
    same = np.array([True, True, True, False, False, False])
    m = metrics_at(scores, same, 0.5)
    assert m.tar == pytest.approx(2 / 3)
    assert m.trr == pytest.approx(2 / 3)
    assert m.accuracy == pytest.approx(4 / 6)


def test_tar_at_far_accepts_at_most_the_allowed_impostors(rng):
    scores, same = _scores(rng, 2000)
    tar, t = tar_at_far(scores, same, 0.01)
    far = (scores[~same] >= t).mean()
    assert far <= 0.01
    # the next lower impostor score would exceed the budget
    assert ((scores[~same] >= np.sort(scores[~same])[::-1][int(0.01 * (~same).sum())]).mean()) > 0.01
    assert tar == pytest.approx((scores[same] >= t).mean())


def test_kfold_picks_thresholds_without_the_test_fold(rng):
    scores, same = _scores(rng, 600)
    folds = np.repeat(np.arange(10), 60)
    mean, std, thresholds = kfold_accuracy(scores, same, folds)
    assert len(thresholds) == 10
    assert 0.85 < mean <= 1.0
    assert std >= 0


def test_metrics_need_both_kinds_of_pairs():
    with pytest.raises(TrainingError, match="both"):
        metrics_at(np.array([0.1, 0.2]), np.array([True, True]), 0.5)


def test_sample_pairs_is_balanced_and_within_groups(rng):
    labels = np.repeat(np.arange(20), 5)
    groups = (labels >= 10).astype(int)[:]  # two sets of 10 people
    i, j, same = sample_pairs(labels, 400, seed=1, groups=groups)
    assert same.sum() == (~same).sum() == 200
    assert (i != j).all()
    assert (labels[i[same]] == labels[j[same]]).all()
    assert (labels[i[~same]] != labels[j[~same]]).all()
    assert (groups[i[~same]] == groups[j[~same]]).all()
    again = sample_pairs(labels, 400, seed=1, groups=groups)
    assert (again[0] == i).all() and (again[1] == j).all()


def test_sample_pairs_without_positives_says_so():
    with pytest.raises(TrainingError, match="two samples"):
        sample_pairs(np.arange(5), 10)


def test_read_lfw_pairs_and_accuracy(tmp_path: Path, rng):
    lines = ["2 2", "A 1 2", "B 1 2", "A 1 B 1", "A 2 C 1", "C 1 2", "D 1 2", "C 1 D 1", "D 2 B 2"]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    pairs = read_lfw_pairs(tmp_path / "pairs.txt")
    assert pairs.same.tolist() == [True, True, False, False] * 2
    assert pairs.fold.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert pairs.left[0] == tmp_path / "A" / "A_0001.jpg"
    centres = {name: rng.normal(size=8) for name in "ABCD"}
    emb = {p: centres[p.parent.name] + rng.normal(size=8) * 0.05 for p in pairs.images}
    mean, _ = lfw_accuracy(emb, pairs)
    assert mean == 1.0
    del emb[pairs.left[0]]  # a missed face counts as "different": the same pair is lost
    assert lfw_accuracy(emb, pairs)[0] < 1.0


def test_read_lfw_pairs_bad_file(tmp_path: Path):
    (tmp_path / "pairs.txt").write_text("1 1\nA 1 2\n")
    with pytest.raises(TrainingError, match="expected 2 pair lines"):
        read_lfw_pairs(tmp_path / "pairs.txt")

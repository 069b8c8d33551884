"""Visitor thresholds mapped from the built-in backbone's cosine scale to a supplied one by
quantile matching on the same impostor pairs (training/backbones.py: map_thresholds)."""
from __future__ import annotations

import numpy as np
import pytest

from faec_rec.config import VisitorsConfig
from faec_rec.faces.card import parse_card
from faec_rec.training.backbones import MIN_PASSING_PAIRS, VISITOR_THRESHOLDS, calibrate, map_thresholds

CARD = {"name": "t", "format": "onnx", "input_size": [112, 112], "embedding_size": 128, "licence": "test"}


def _pass_rate(scores: np.ndarray, t: float) -> float:
    return float((scores >= t).mean())


@pytest.mark.parametrize("transform", [lambda b: 0.3 * b - 0.1, lambda b: np.sign(b) * np.abs(b) ** 3],
                         ids=["linear", "cubic"])
def test_each_threshold_keeps_its_impostor_pass_rate(transform) -> None:
    builtin = np.random.default_rng(1).normal(0.75, 0.05, 20_000)
    supplied = transform(builtin)  # the same pairs, another (monotone) scale
    wanted = {"strong_threshold": 0.87, "centre_threshold": 0.86, "merge_threshold": 0.86, "rival_threshold": 0.84}
    out = map_thresholds(builtin, supplied, wanted, margin=0.01)
    assert out["paused"] is None
    for name, t in wanted.items():
        q = _pass_rate(builtin, t)
        assert out["pass_rates"][name] == pytest.approx(q) and out["passing_pairs"][name] >= MIN_PASSING_PAIRS
        mapped = out["thresholds"][name]
        assert _pass_rate(supplied, mapped) == pytest.approx(q)  # the same pass rate under the supplied backbone
        assert mapped == pytest.approx(float(transform(np.float64(t))), abs=2e-3)  # = the true mapping of t
    # order kept: strong >= centre = merge >= rival
    m = out["thresholds"]
    assert m["strong_threshold"] > m["centre_threshold"] == m["merge_threshold"] > m["rival_threshold"]
    assert out["ambiguity_margin"] == pytest.approx(0.01 * np.std(supplied) / np.std(builtin), rel=1e-3)


def test_thresholds_too_few_impostors_reach_pause_and_say_so() -> None:
    builtin = np.random.default_rng(2).normal(0.75, 0.05, 3000)
    wanted = {k: getattr(VisitorsConfig(), k) for k in VISITOR_THRESHOLDS}  # the defaults: 0.92..0.95, far in the tail
    out = map_thresholds(builtin, builtin * 0.5, wanted)
    assert out["thresholds"] is None and out["ambiguity_margin"] is None
    assert min(out["passing_pairs"].values()) < MIN_PASSING_PAIRS
    assert "too few impostor pairs" in out["paused"] and "strong_threshold 0.95" in out["paused"]
    assert "visitors pause" in out["paused"]


def test_scores_of_different_pairs_are_refused() -> None:
    with pytest.raises(ValueError, match="same pairs under both backbones"):
        map_thresholds(np.zeros(10), np.zeros(9), {"strong_threshold": 0.5})


def test_calibrate_records_the_mapping_on_the_same_crops() -> None:
    rng = np.random.default_rng(3)
    people = rng.standard_normal((40, 128))
    labels = np.repeat(np.arange(40), 3)
    builtin = (people[labels] * 3 + rng.standard_normal((120, 128))).astype(np.float32)
    rotation = np.linalg.qr(rng.standard_normal((128, 128)))[0]
    supplied = (builtin @ rotation).astype(np.float32)  # the same cosine scores: the mapping must be the identity
    i, j = np.triu_indices(120, k=1)
    unit = builtin / np.linalg.norm(builtin, axis=1, keepdims=True)
    impostor = np.einsum("nd,nd->n", unit[i], unit[j])[labels[i] != labels[j]]
    t = float(np.quantile(impostor, 0.9))
    _, details = calibrate(supplied, labels, parse_card(CARD), builtin,
                           visitors={"strong_threshold": t, "centre_threshold": t, "ambiguity_margin": 0.01})
    got = details["visitors"]
    assert got["impostor_pairs"] == impostor.size and got["paused"] is None
    assert got["thresholds"]["strong_threshold"] == pytest.approx(float(impostor[impostor >= t].min()), abs=1e-5)
    assert got["ambiguity_margin"] == pytest.approx(0.01, abs=1e-4)
    _, none = calibrate(supplied, labels, parse_card(CARD), None, visitors={"strong_threshold": t})
    assert none["visitors"]["thresholds"] is None and "pause" in none["visitors"]["paused"]

"""The open-set rule and threshold calibration: pure functions on scores."""
from __future__ import annotations

import json

import numpy as np
import pytest

from faec_rec.errors import GalleryError
from faec_rec.index.calibration import FALLBACK_THRESHOLD, default_threshold, threshold_at_far
from faec_rec.index.decision import Decision, decide, person_threshold


def test_person_threshold_without_impostors_is_global() -> None:
    assert person_threshold(np.zeros(0), 0.6) == 0.6


def test_person_threshold_rises_above_look_alikes_and_is_capped() -> None:
    assert person_threshold(np.array([0.1, 0.2, 0.3]), 0.6) == 0.6  # far impostors: global
    raised = person_threshold(np.array([0.5, 0.66, 0.68]), 0.6, quantile=1.0, guard=0.02)
    assert raised == pytest.approx(0.70)
    capped = person_threshold(np.array([0.95]), 0.6, quantile=1.0, guard=0.02, max_raise=0.15)
    assert capped == pytest.approx(0.75)


def test_decide_threshold_and_margin() -> None:
    assert decide(0.8, None, 0.7, 0.1) is Decision.KNOWN
    assert decide(0.69, None, 0.7, 0.0) is Decision.UNKNOWN
    assert decide(0.8, 0.75, 0.7, 0.1) is Decision.UNKNOWN  # too close to the runner-up
    assert decide(0.8, 0.65, 0.7, 0.1) is Decision.KNOWN


def test_threshold_at_far_meets_target(rng: np.random.Generator) -> None:
    genuine = rng.normal(0.8, 0.05, 5000)
    impostor = rng.normal(0.3, 0.1, 20000)
    cal = threshold_at_far(genuine, impostor, 0.001)
    assert cal.far <= 0.001
    assert np.mean(impostor >= cal.threshold) == pytest.approx(cal.far)
    # The lowest such threshold: one step down accepts more than the target.
    below = np.sort(impostor)[::-1][int(0.001 * impostor.size)]
    assert np.mean(impostor >= below) > 0.001
    assert cal.tar > 0.99


def test_threshold_at_far_rejects_empty_input() -> None:
    with pytest.raises(GalleryError):
        threshold_at_far(np.zeros(0), np.ones(3), 0.01)


def test_default_threshold_reads_card_and_falls_back(tmp_path) -> None:
    card = tmp_path / "model_card.json"
    card.write_text(json.dumps({"backbone_version": "dlib-resnet-v1", "projections": {"base": {"threshold": 0.713}}}))
    assert default_threshold("base", card) == pytest.approx(0.713)
    assert default_threshold("head-9", card) == FALLBACK_THRESHOLD
    assert default_threshold("base", tmp_path / "absent.json") == FALLBACK_THRESHOLD

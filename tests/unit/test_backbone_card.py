"""Backbone cards and the calibration of a supplied backbone (pure: no model, no Redis)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from faec_rec.errors import ModelError
from faec_rec.faces.align import TEMPLATE_150
from faec_rec.faces.card import ARCFACE_112, parse_card, read_card
from faec_rec.faces.supplied import chip_to_input
from faec_rec.training.backbones import MIN_IMPOSTOR_PAIRS, calibrate, raise_scale

CARD = {"name": "mfn", "format": "tflite", "input_size": [112, 112], "embedding_size": 128, "licence": "research only"}


def test_a_minimal_card_takes_documented_defaults() -> None:
    card = parse_card(CARD)
    assert (card.colour, card.layout, card.mean, card.std, card.alignment) == ("RGB", "NHWC", (0, 0, 0), (1, 1, 1), "arcface-112")
    np.testing.assert_allclose(card.template(), ARCFACE_112)
    np.testing.assert_allclose(parse_card({**CARD, "input_size": [224, 224]}).template(), ARCFACE_112 * 2)


@pytest.mark.parametrize(("change", "message"), [
    ({"embedding_size": 512}, "only 128-d backbones"),
    ({"input_size": [8, 8]}, "16-1024 pixels"),
    ({"std": [1, 0, 1]}, "std must not contain 0"),
    ({"alignment": [[1, 2], [3, 4]]}, "5 \\[x, y\\] pairs"),
    ({"format": "pt"}, "format"),
    ({"colour": "rgb"}, "colour"),
    ({"licence": ""}, "licence"),
    ({"name": "Bad Name"}, "name"),
    ({"normalise": True}, "normalise: Extra inputs are not permitted"),
])
def test_a_bad_card_is_refused_naming_the_field(change: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        parse_card({**CARD, **change})


def test_a_card_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    path.write_text("{name: mfn")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_card(path)
    with pytest.raises(ModelError, match="cannot read the model card"):
        read_card(tmp_path / "absent.json")
    path.write_text(json.dumps({k: v for k, v in CARD.items() if k != "licence"}))
    with pytest.raises(ModelError, match="licence: Field required"):
        read_card(path)


def test_the_chip_is_re_aligned_onto_the_cards_template() -> None:
    """The detector's landmarks sit at TEMPLATE_150 in a chip; the warp takes them to the card's points."""
    card = parse_card({**CARD, "alignment": "arcface-112"})
    m = chip_to_input(card)
    mapped = TEMPLATE_150 @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped - ARCFACE_112).max() < 4.0  # a similarity fit of two mean shapes: close, not exact
    same = chip_to_input(parse_card({**CARD, "input_size": [150, 150], "alignment": "dlib-150"}))
    np.testing.assert_allclose(same, [[1, 0, 0], [0, 1, 0]], atol=1e-9)  # the built-in geometry: identity


def test_calibration_on_enough_pairs_reaches_the_target_far() -> None:
    rng = np.random.default_rng(3)
    people = 60
    centres = rng.standard_normal((people, 128))
    labels = np.repeat(np.arange(people), 3)
    feats = (centres[labels] + 0.6 * rng.standard_normal((len(labels), 128))).astype(np.float32)
    threshold, details = calibrate(feats, labels, parse_card(CARD), builtin_features=feats * 2)
    assert details["impostor_pairs"] >= MIN_IMPOSTOR_PAIRS and details["calibrated_on"] == "gallery crops"
    assert details["far"] <= 0.001 and 0.5 < details["tar"] <= 1.0
    assert details["raise_scale"] == 1.0  # same directions: the same spread
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    scores = x @ x.T
    impostor = scores[labels[:, None] != labels[None, :]]
    assert np.mean(impostor >= threshold) <= 0.001 < np.mean(impostor >= threshold - 0.02)


def test_too_few_pairs_falls_back_to_the_cards_threshold_and_says_so() -> None:
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((6, 128)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    threshold, details = calibrate(feats, labels, parse_card({**CARD, "threshold": 0.42}))
    assert threshold == 0.42 and details["calibrated_on"].startswith("card")
    threshold, details = calibrate(feats, labels, parse_card(CARD))
    assert threshold == details["measured_threshold"] and "only 12 impostor pairs" in details["calibrated_on"]


def test_raise_scale_is_the_ratio_of_impostor_spreads() -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(0.5, 0.05, 1000)
    assert raise_scale(0.3 + 3 * (base - 0.5), base) == pytest.approx(3.0, rel=1e-3)
    assert raise_scale(np.array([0.1]), base) == 1.0  # too few to say

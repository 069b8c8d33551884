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
from faec_rec.index.calibration import gallery_search_table, person_scores, supplied_threshold, table_threshold
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


def _gallery(rng: np.random.Generator, people: int, per_person: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.standard_normal((people, 128))
    labels = np.repeat(np.arange(people), per_person)
    return (centres[labels] + noise * rng.standard_normal((len(labels), 128))).astype(np.float32), labels


def _stranger_rejection(rng: np.random.Generator, gallery: np.ndarray, labels: np.ndarray, threshold: float,
                        strangers: int, noise: float) -> float:
    """Share of new people's faces (drawn like the gallery's) whose best person score stays below ``threshold``."""
    faces, _ = _gallery(rng, strangers, 1, noise)
    scores, people = person_scores(np.concatenate([gallery, faces]), np.concatenate([labels, -1 - np.arange(strangers)]), 0.7)
    return float(np.mean(scores[len(labels):, people >= 0].max(axis=1) < threshold))


def test_the_search_table_gives_the_configured_stranger_rate_where_the_scaled_raise_does_not() -> None:
    """Features whose impostor scores have a known distribution (random people in 128-d: cosine
    ~ N(0, 1/128), whose best-of-N climbs unlike the built-in's on LFW): the served threshold from the gallery's own
    leave-one-person-out table rejects new strangers at the configured rate over the whole
    gallery; the old rule (built-in raise x spread ratio) lets several times that many through."""
    rng = np.random.default_rng(7)
    gallery, labels = _gallery(rng, 150, 4, 1.0)
    # the built-in's features of the same faces spread alike (raise_scale 1): the old rule
    # adds the built-in's LFW search raise, whose tail is not this distribution's
    pair, details = calibrate(gallery, labels, parse_card(CARD), builtin_features=gallery)
    assert details["raise_scale"] == 1.0
    table = details["search"]
    assert table is not None and details["search_calibrated_on"].startswith("gallery crops, leave one person out (150 people")
    assert table["people"][-1] == 149 and table["probes"] == 600
    far = 0.005
    served = supplied_threshold(pair, 150, far, search=table)
    old = supplied_threshold(pair, 150, far, search=None, raise_scale=details["raise_scale"])
    rejection = _stranger_rejection(rng, gallery, labels, served, 4000, 1.0)
    assert rejection >= 1 - 2.5 * far  # 0.5% target: within sampling error of 4,000 strangers
    assert _stranger_rejection(rng, gallery, labels, old, 4000, 1.0) < 1 - 3 * far
    assert served > old
    # a bigger gallery asks more: the threshold rises with the number of people
    assert table_threshold(table, 10, far) < table_threshold(table, 100, far) <= table_threshold(table, 1000, far)


def test_the_table_matches_drawing_random_galleries() -> None:
    """The exact leave-one-person-out rate agrees with sampling galleries of n other people."""
    rng = np.random.default_rng(8)
    gallery, labels = _gallery(rng, 80, 3, 0.9)
    table = gallery_search_table(gallery, labels, 0.7)
    assert table is not None and table["people"] == [1, 2, 3, 5, 10, 20, 50, 79]
    scores, _ = person_scores(gallery, labels, 0.7)
    best = []
    for _ in range(20000):
        probe = int(rng.integers(len(labels)))
        others = np.setdiff1d(np.arange(80), [labels[probe]])
        best.append(scores[probe, rng.choice(others, 20, replace=False)].max())
    sampled = float(np.quantile(best, 0.98))
    assert table_threshold(table, 20, 0.02) == pytest.approx(sampled, abs=0.01)


def test_person_scores_are_the_replicas_mix_of_centroid_and_best_template() -> None:
    rng = np.random.default_rng(9)
    feats = rng.standard_normal((5, 128)).astype(np.float32)
    labels = np.array([3, 3, 1, 3, 7])
    scores, people = person_scores(feats, labels, 0.7)
    assert list(people) == [1, 3, 7]
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    centre = x[[0, 1, 3]].mean(axis=0)
    centre /= np.linalg.norm(centre)
    expected = 0.7 * x[2] @ centre + 0.3 * max(x[2] @ x[j] for j in (0, 1, 3))
    assert scores[2, 1] == pytest.approx(expected, abs=1e-5)
    assert scores[0, 2] == pytest.approx(x[0] @ x[4], abs=1e-5)  # one template: the best one only


def test_a_small_gallery_falls_back_to_the_scaled_raise_and_says_so() -> None:
    rng = np.random.default_rng(10)
    gallery, labels = _gallery(rng, 12, 3, 0.6)
    pair, details = calibrate(gallery, labels, parse_card(CARD), builtin_features=gallery)
    assert details["search"] is None and details["search_calibrated_on"].startswith("built-in search raise x raise_scale (only 12 people")
    assert supplied_threshold(pair, 12, 0.005, search=None, raise_scale=1.0) > pair  # the built-in raise still lifts
    assert supplied_threshold(pair, 12, None, search=None) == pair

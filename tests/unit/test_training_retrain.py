"""Scheduled retraining: the promotion gate, and whole runs on a real Redis with synthetic features."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faec_rec.config import load_settings
from faec_rec.index.store import NewTemplates, Store
from faec_rec.training.evaluate import LfwPairs
from faec_rec.training.registry import ModelRegistry, Status
from faec_rec.training.retrain import (
    TrainingLock,
    build_reference,
    gallery_data,
    holdout_split,
    promotion_gate,
    run,
)

NUISANCE = 8  # a few directions where the gallery's camera adds strong noise


def _domain_features(rng: np.random.Generator, people: int, per: int) -> tuple[np.ndarray, np.ndarray]:
    """Identity centres plus a large per-image nuisance in a fixed subspace: base
    cosine is confused by it, a head can learn to ignore it."""
    basis = np.linalg.qr(np.random.default_rng(99).normal(size=(128, 128)))[0]
    centres = rng.normal(size=(people, 128 - NUISANCE))
    labels = np.repeat(np.arange(people), per)
    ident = centres[labels] + rng.normal(size=(labels.size, 128 - NUISANCE)) * 0.35
    nuisance = rng.normal(size=(labels.size, NUISANCE)) * 4.0
    feats = np.concatenate([ident, nuisance], axis=1) @ basis.T
    return feats.astype(np.float32), labels


def _reference(rng: np.random.Generator):
    """A synthetic LFW: 10 folds of disjoint people, 4 same + 4 different pairs each."""
    people, per = 80, 3
    centres = rng.normal(size=(people, 128))
    labels = np.repeat(np.arange(people), per)
    feats = (centres[labels] + rng.normal(size=(labels.size, 128)) * 0.4).astype(np.float32)
    paths = [Path(f"/ref/P{p}/P{p}_{i + 1:04d}.jpg") for p in range(people) for i in range(per)]
    left, right, same, fold = [], [], [], []
    for f in range(10):
        ppl = list(range(f * 8, f * 8 + 8))
        for p in ppl[:4]:
            left.append(Path(f"/ref/P{p}/P{p}_0001.jpg")); right.append(Path(f"/ref/P{p}/P{p}_0002.jpg"))
            same.append(True); fold.append(f)
        for a, b in zip(ppl[4:], ppl[:4]):
            left.append(Path(f"/ref/P{a}/P{a}_0003.jpg")); right.append(Path(f"/ref/P{b}/P{b}_0003.jpg"))
            same.append(False); fold.append(f)
    pairs = LfwPairs(left, right, np.array(same), np.array(fold))
    return build_reference(feats, paths, pairs)


def _enrol(redis_client, keys, data_dir: Path, feats: np.ndarray, labels: np.ndarray) -> None:
    store = Store(redis_client, keys, data_dir)
    for p in np.unique(labels):
        rows = np.flatnonzero(labels == p)
        store.enrol(
            f"person {p}",
            NewTemplates.check(feats[rows], [f"img{r}" for r in rows], [f"h{r}" for r in rows], None, None),
            version="base",
        )


def _settings(prefix: str, tmp_path: Path, **training):
    base = {"epochs": 8, "identities_per_batch": 8, "images_per_identity": 4, "anchor_weight": 0.2}
    base.update(training)
    return load_settings(prefix=prefix, data_dir=tmp_path, redis_url="redis://unused", training=base)


def test_gate_promotes_only_a_better_head_within_the_lfw_budget():
    cur = {"gallery_tar_at_far": 0.80, "lfw_accuracy": 0.990}
    assert not promotion_gate(cur, {"gallery_tar_at_far": 0.78, "lfw_accuracy": 0.995}, 0.002).promote
    assert not promotion_gate(cur, {"gallery_tar_at_far": 0.80, "lfw_accuracy": 0.990}, 0.002).promote
    worse_lfw = promotion_gate(cur, {"gallery_tar_at_far": 0.90, "lfw_accuracy": 0.985}, 0.002)
    assert not worse_lfw.promote and "0.50 LFW points" in worse_lfw.reason
    assert promotion_gate(cur, {"gallery_tar_at_far": 0.90, "lfw_accuracy": 0.9885}, 0.002).promote
    assert not promotion_gate(cur, {"gallery_tar_at_far": 0.85, "lfw_accuracy": 0.99}, 0.002, min_gain=0.1).promote
    missing = promotion_gate(cur, {"gallery_tar_at_far": 0.95}, 0.002)
    assert not missing.promote and "lfw_accuracy" in missing.reason


def test_holdout_keeps_two_templates_to_train_on():
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    probe = holdout_split(labels, 0.5, seed=0)
    assert probe[labels == 0].sum() == 0  # two templates: nothing held out
    assert probe[labels == 1].sum() == 1
    assert probe[labels == 2].sum() == 3
    data = gallery_data(np.ones((11, 128), np.float32), [str(x) for x in labels], 0.5)
    assert data.train.n + data.probes.n == 11 and data.people == 3


def test_run_promotes_a_better_head_and_switches_the_gallery(redis_client, keys, prefix, tmp_path, rng):
    feats, labels = _domain_features(rng, 30, 6)
    _enrol(redis_client, keys, tmp_path, feats, labels)
    settings = _settings(prefix, tmp_path, max_lfw_drop=0.5)
    summary = run(settings, redis=redis_client, reference=_reference(rng))
    assert summary["status"] == "promoted", summary
    assert summary["candidate"]["gallery_tar_at_far"] > summary["in_service_before"]["gallery_tar_at_far"]
    registry = ModelRegistry(redis_client, keys, tmp_path / "models")
    assert registry.current() == summary["version"] == "head-1"
    assert registry.events()[-1]["type"] == "promote"
    assert Store(redis_client, keys, tmp_path).version() == "head-1"
    assert redis_client.get(keys.train_lock()) is None  # released


def test_a_worse_candidate_is_kept_but_never_put_in_service(redis_client, keys, prefix, tmp_path, rng):
    feats, labels = _domain_features(rng, 20, 5)
    _enrol(redis_client, keys, tmp_path, feats, labels)
    settings = _settings(prefix, tmp_path, min_gain=0.99, epochs=2)
    summary = run(settings, redis=redis_client, reference=_reference(rng))
    assert summary["status"] == "rejected"
    registry = ModelRegistry(redis_client, keys, tmp_path / "models")
    assert registry.current() == "base"
    assert registry.record(summary["version"]).status == Status.REJECTED
    assert registry.events() == []
    assert Store(redis_client, keys, tmp_path).version() is None


def test_too_little_gallery_data_skips_with_a_reason(redis_client, keys, prefix, tmp_path, rng):
    settings = _settings(prefix, tmp_path)
    empty = run(settings, redis=redis_client, reference=_reference(rng))
    assert empty["status"] == "skipped" and "0 people" in empty["reason"]
    feats, labels = _domain_features(rng, 4, 1)  # one template each: enrolment only
    _enrol(redis_client, keys, tmp_path, feats, labels)
    one_each = run(settings, redis=redis_client, reference=_reference(rng))
    assert one_each["status"] == "skipped" and "one template" in one_each["reason"]
    assert one_each["current"] == "base"


def test_a_missing_reference_set_skips_and_says_what_to_set(redis_client, keys, prefix, tmp_path, rng):
    feats, labels = _domain_features(rng, 6, 4)
    _enrol(redis_client, keys, tmp_path, feats, labels)
    summary = run(_settings(prefix, tmp_path, reference_dir=str(tmp_path / "no-lfw-here")), redis=redis_client)
    assert summary["status"] == "skipped" and "training.reference_dir" in summary["reason"]


def test_a_fresh_install_retrains_with_the_shipped_reference_and_its_gate_decides(redis_client, keys, prefix, tmp_path, rng):
    """No LFW anywhere under data_dir: the compact reference shipped in the package judges the head."""
    from faec_rec.training.shipped_reference import shipped_reference

    assert not (tmp_path / "reference").exists()
    feats, labels = _domain_features(rng, 12, 5)
    _enrol(redis_client, keys, tmp_path, feats, labels)
    summary = run(_settings(prefix, tmp_path, max_lfw_drop=1.0), redis=redis_client)
    assert summary["status"] in ("promoted", "rejected"), summary
    assert 0.9 < summary["in_service_before"]["lfw_accuracy"] <= 1.0  # base on the shipped real faces
    assert 0.0 < summary["candidate"]["lfw_accuracy"] <= 1.0
    assert summary["threshold"] is not None
    strict = run(_settings(prefix, tmp_path, max_lfw_drop=0.0, min_gain=0.99), redis=redis_client)
    assert strict["status"] == "rejected" and "cannot judge" not in strict["reason"]
    ref = shipped_reference()
    assert ref.features.shape == (124, 128) and ref.same.sum() > 200 and (~ref.same).sum() > 7000


def test_one_training_at_a_time(redis_client, keys, prefix, tmp_path, rng):
    feats, labels = _domain_features(rng, 6, 4)
    _enrol(redis_client, keys, tmp_path, feats, labels)
    with TrainingLock(redis_client, keys, ttl_s=30):
        summary = run(_settings(prefix, tmp_path), redis=redis_client, reference=_reference(rng))
    assert summary["status"] == "skipped" and "holds the lock" in summary["reason"]
    assert redis_client.get(keys.train_lock()) is None


def test_feedback_not_faces_join_the_gates_impostor_pairs(rng):
    """A face a user said is *not* person 0, scoring like person 0, lowers TAR@1%FAR."""
    from faec_rec.index.projection import BaseProjector
    from faec_rec.training.retrain import gallery_data, negative_pair_scores, score

    feats, labels = _domain_features(rng, 10, 6)
    data = gallery_data(feats, [f"p{label}" for label in labels], 0.34)
    base = BaseProjector()
    plain = score(base, data, None)
    lookalikes = [(0, feats[labels == 0][0] + 0.01 * rng.normal(size=128).astype(np.float32)) for _ in range(40)]
    assert negative_pair_scores(base, data, lookalikes).size == 40 * int((data.train.labels == 0).sum())
    with_negatives = score(base, data, None, lookalikes)
    assert with_negatives["gallery_tar_at_far"] < plain["gallery_tar_at_far"]


def test_negative_pairs_of_the_visitors_stream_reach_the_gate(redis_client, keys):
    import base64
    import json

    from faec_rec.training.retrain import _negative_rows

    vec = np.arange(128, dtype=np.float32) / 128
    for person in ("pA", "gone"):
        redis_client.xadd(keys.negative_pairs(), {"pair": json.dumps(
            {"event_id": "1-0", "person_id": person, "at": 1.0, "features": base64.b64encode(vec.tobytes()).decode()})})
    rows = _negative_rows(redis_client, keys, ["p0", "pA"])
    assert [(label, v.tobytes()) for label, v in rows] == [(1, vec.tobytes())]

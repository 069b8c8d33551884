"""Visitors across a backbone switch (real Redis): a face embedded with the backbone that
was in service before a switch is not kept; under a supplied backbone, joins and regrouping
use the visitor thresholds mapped to it, and a backbone none could be mapped to refuses."""
from __future__ import annotations

import json

import numpy as np
import pytest

from faec_rec.config import VisitorsConfig
from faec_rec.errors import VisitorError
from faec_rec.visitors.service import Visitors
from tests.unit.test_visitors import _face, people


def _switch(redis_client, keys, name: str, visitors: dict | None) -> None:
    """Record backbone ``name`` as added (with ``visitors`` as its mapping) and in service."""
    record = {"name": name, "file": "x.tflite", "sha256": "0" * 64, "card": {}, "created": 0.0,
              "calibration": {"visitors": {"thresholds": visitors, "paused": None if visitors else "too few impostor pairs"}}}
    redis_client.hset(keys.backbones(), name, json.dumps(record))
    redis_client.set(keys.backbone_current(), json.dumps({"name": name, "generation": 1}))


def test_a_face_embedded_before_a_switch_is_not_kept(redis_client, keys, tmp_path, rng) -> None:
    feats, _ = people(rng, 1, 3)
    stale = Visitors(redis_client, keys, VisitorsConfig(), tmp_path)  # a worker still on the built-in backbone
    assert stale.join(_face("a", feats[0])).stored
    _switch(redis_client, keys, "pixels", {"strong_threshold": 0.5})
    late = stale.join(_face("b", feats[1]))
    assert not late.stored and late.visitor is None
    assert redis_client.zcard(keys.unknown_faces()) == 1 and not redis_client.exists(keys.unknown_face("b"))
    stale.use_backbone("pixels", VisitorsConfig())  # following the switch, it keeps faces again, marked as such
    assert stale.join(_face("c", feats[2])).stored
    assert redis_client.hget(keys.unknown_face("c"), "backbone") == b"pixels"


def test_regroup_uses_the_mapped_thresholds_or_refuses(redis_client, keys, tmp_path, rng) -> None:
    feats, _ = people(rng, 2, 4)
    visitors = Visitors(redis_client, keys, VisitorsConfig(), tmp_path)
    for i, f in enumerate(feats):
        visitors.join(_face(f"f{i}", f))
    assert len(visitors.list()) == 2
    _switch(redis_client, keys, "paused-one", None)
    with pytest.raises(VisitorError, match="visitors are paused under backbone paused-one"):
        visitors.regroup()
    # mapped thresholds so low that everyone links: the regroup follows them (one visitor)
    low = {"link_threshold": -1.0, "strong_threshold": -1.0, "centre_threshold": -1.0, "merge_threshold": -1.0, "rival_threshold": 1.0}
    _switch(redis_client, keys, "mapped-one", low)
    visitors.regroup()
    assert len(visitors.list()) == 1
    assert np.isclose(VisitorsConfig().strong_threshold, visitors.config.strong_threshold)  # its own settings untouched

"""Hard negative pairs from corrections (``feedback EVENT --not NAME``), for head retraining.

Each entry of the stream ``keys.negative_pairs()`` holds one field ``pair``,
a JSON object: ``event_id`` (the corrected recognition event), ``person_id``
(the person the face is NOT), ``at`` (unix s) and ``features`` (base64 of the
face's raw backbone features, (128,) float32). The writer is
:func:`faec_rec.visitors.corrections.record_negative`.

A retraining step can use a pair as a hard negative: the face against the
person's templates (a triplet with the face as negative for an anchor of
that person, or a "different" pair in a contrastive batch).
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from faec_rec.keys import Keys


@dataclass(frozen=True)
class NegativePair:
    """A face (``features``: (128,) float32 raw backbone) that is not ``person_id``."""

    entry_id: str
    event_id: str
    person_id: str
    features: np.ndarray
    at: float


def read_negative_pairs(redis: Any, keys: Keys, person_ids: set[str] | None = None) -> list[NegativePair]:
    """Every negative pair, oldest first (only those of ``person_ids`` when given; malformed entries skipped)."""
    out = []
    for entry_id, fields in redis.xrange(keys.negative_pairs()):
        try:
            data = json.loads(fields.get(b"pair") or fields.get("pair"))
            vec = np.frombuffer(base64.b64decode(data["features"]), np.float32).copy()
        except (KeyError, TypeError, ValueError):
            continue
        if vec.shape != (128,) or (person_ids is not None and data.get("person_id") not in person_ids):
            continue
        eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        out.append(NegativePair(eid, str(data.get("event_id")), str(data.get("person_id")), vec, float(data.get("at", 0))))
    return out


def forget_negative_pairs(redis: Any, keys: Keys, person_id: str) -> int:
    """Delete every pair naming ``person_id``; returns entries deleted."""
    doomed = [p.entry_id for p in read_negative_pairs(redis, keys) if p.person_id == person_id]
    for start in range(0, len(doomed), 500):
        redis.xdel(keys.negative_pairs(), *doomed[start:start + 500])
    return len(doomed)

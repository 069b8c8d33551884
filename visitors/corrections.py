"""Corrections that teach: ``feedback EVENT --is NAME`` / ``--not NAME``.

``--is NAME``: the feedback entry is recorded (training/feedback.py) and the
event's face becomes a template of NAME (content hash ``event:<id>``, so a
repeated confirmation adds nothing twice): recognition of NAME improves as
people confirm.

``--not NAME``: besides the feedback entry,

(a) the face is stored as an unknown face (id ``fb-<event id>``) and joined
    to a visitor by the usual rule, so it shows up with the strangers;
(b) a hard negative pair (the face's features, NAME's person id) is appended
    to the stream ``keys.negative_pairs()`` for the next head retraining
    (:func:`faec_rec.training.negatives.read_negative_pairs`);
(c) the face is kept as a *collision* of NAME (``keys.person_collisions``):
    a later face is not accepted as NAME when it is at least as close to one
    of NAME's collisions as to NAME (:func:`check_collisions`, called by the
    worker pipeline): NAME's threshold rises locally, around that face only
    (PhotoPrism's "collision radius").
"""
from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from faec_rec.client import Client

log = logging.getLogger(__name__)



def apply_feedback(client: Client, event_id: str, *, is_: str | None = None, not_: str | None = None) -> dict[str, Any]:
    """The work of :meth:`faec_rec.client.Client.feedback`."""
    from faec_rec.training.feedback import record_feedback

    if (is_ is None) == (not_ is None):
        raise ValueError("give exactly one of is_ (the face was this person) or not_ (it was not)")
    person = client.gallery.person(is_ if is_ is not None else not_)
    stream_id, entry = record_feedback(client.redis, client.keys, event_id, person.id, person.name, is_ is not None)
    out: dict[str, Any] = {"feedback_id": stream_id, "event_id": event_id, "person_id": person.id,
                           "person": person.name, "is_person": entry.is_person, "usable": entry.usable,
                           "reason": entry.reason, "template_id": None, "visitor": None, "negative_id": None}
    features = entry.vector()
    if features is None:
        return out
    if is_ is not None:
        result = client.gallery.enrol(person.name, features[None, :], person_id=person.id,
                                      sources=[f"event {event_id}"], content_hashes=[f"event:{event_id}"])
        out["template_id"] = result.added[0] if result.added else None
        return out
    out["negative_id"] = record_negative(client.redis, client.keys, event_id, person.id, features)
    client.redis.hset(client.keys.person_collisions(person.id), f"fb-{event_id}", features.astype(np.float32).tobytes())
    out["visitor"] = store_corrected_face(client, event_id, features)
    return out


def store_corrected_face(client: Client, event_id: str, features: np.ndarray) -> str | None:
    """Keep a corrected face as an unknown face and join it to a visitor; returns the visitor id."""
    from faec_rec.training.feedback import find_event
    from faec_rec.visitors.store import NewFace

    event = find_event(client.redis, client.keys, event_id)
    face = NewFace(face_id=f"fb-{event_id}", features=features, good=True,
                   source=f"{event.get('camera')}/{event.get('frame')}", camera=event.get("camera"),
                   frame=event.get("frame"), track=event.get("track_id"), box=event.get("box"),
                   at=float(event.get("captured_at") or time.time()))
    joined = client.visitors_store.join(face)
    client.visitors_store.store.set_event(face.face_id, event_id)
    return joined.visitor


def record_negative(redis: Any, keys: Any, event_id: str, person_id: str, features: np.ndarray) -> str:
    """Append one hard negative pair: this face (raw (128,) float32) is NOT ``person_id``."""
    entry = {"event_id": event_id, "person_id": person_id, "at": time.time(),
             "features": base64.b64encode(np.asarray(features, np.float32).tobytes()).decode()}
    sid = redis.xadd(keys.negative_pairs(), {"pair": json.dumps(entry, separators=(",", ":"))},
                     maxlen=100_000, approximate=True)
    return sid.decode() if isinstance(sid, bytes) else str(sid)


# ---- the worker side: a person's collisions raise their threshold locally -------------
class Collisions:
    """Reads every person's corrected faces (unit vectors) from Redis.

    Not cached: a correction must act on the very next face, and the read is
    one round trip per frame with known faces (HVALS of the few people matched).
    """

    def __init__(self, redis: Any, keys: Any) -> None:
        self.redis, self.keys = redis, keys

    def of_many(self, person_ids: list[str]) -> dict[str, np.ndarray]:
        pipe = self.redis.pipeline(transaction=False)
        for pid in person_ids:
            pipe.hvals(self.keys.person_collisions(pid))
        out = {}
        for pid, raw in zip(person_ids, pipe.execute()):
            rows = [np.frombuffer(v, np.float32) for v in raw if len(v) == 512]
            if rows:
                vecs = np.stack(rows)
                out[pid] = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return out


def check_collisions(collisions: Collisions, features: np.ndarray, matches: list[Any]) -> list[Any]:
    """Turn a "known" match into "unknown" when the face is at least as close (cosine of
    raw backbone features) to one of that person's corrected faces as its match score.

    ``features``: (n, 128) raw; ``matches``: the gallery's answers (``Match``), one per row.
    """
    from faec_rec.index.decision import Decision

    known = sorted({m.person_id for m in matches if getattr(m, "decision", None) == Decision.KNOWN and m.person_id})
    if not known:
        return matches
    held = collisions.of_many(known)
    out = []
    for row, match in zip(features, matches):
        if getattr(match, "decision", None) == Decision.KNOWN and match.person_id in held:
            vecs = held[match.person_id]
            if len(vecs):
                q = row / max(float(np.linalg.norm(row)), 1e-12)
                closest = float((vecs @ q).max())
                if closest >= float(match.score):
                    log.info("face matched %s at %.3f but a face corrected as not them is %.3f away: unknown",
                             match.person_id, match.score, closest)
                    match = replace(match, decision=Decision.UNKNOWN)
        out.append(match)
    return out


def forget_person_collisions(redis: Any, keys: Any, person_id: str) -> None:
    redis.delete(keys.person_collisions(person_id))

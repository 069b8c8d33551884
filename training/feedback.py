"""People's confirmations and corrections of recognition events.

``faec-rec feedback EVENT --is NAME`` says the face of event EVENT was NAME;
``--not NAME`` says it was not. Each becomes one entry of the stream
``keys.feedback()`` (field "feedback", JSON). The event is looked up in the
combined event stream first: feedback on an event that expired from the
stream (or never existed) is refused with a message saying so.

An entry can train the head only when it carries the face's backbone
features. Events carry ids, not arrays: a worker publishing an "arrived" or
"updated" event stores the raw features of the face that made it under the
event's ``features_key`` (``keys.event_features``) for ``events.features_ttl_s``
seconds (default 7 days). Feedback copies those bytes into its entry (an
event's inline ``features``, base64 float32, is accepted too), so the entry
stays usable after the key expires. Feedback on an event whose features have
expired, or that never had any ("left" events, ``features_ttl_s = 0``), is
recorded with ``usable: false`` and a ``reason``; training skips it.

``--is NAME`` entries are positives for NAME in :func:`training_set
<faec_rec.training.retrain.training_set>`; ``--not NAME`` entries are recorded
(with their features) for review and future use, but head training does not
use them: the metric losses learn from labelled identities, and "not NAME"
gives no label.

Forgetting: :func:`forget_feedback` deletes every entry naming a person
(``faec_rec.client.Client.forget`` calls it); the event feature keys name
cameras and frames, not people, so ``events.features_ttl_s`` bounds how long
a forgotten person's face stays there.
"""
from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from faec_rec.errors import BadEventIdError
from faec_rec.keys import Keys

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import redis as redis_lib

FEATURE_BYTES = 128 * 4


@dataclass(frozen=True)
class Feedback:
    """One confirmation (``is_person`` True) or correction (False) of an event."""

    event_id: str
    person_id: str
    person: str
    is_person: bool
    camera: str | None
    model_version: str | None
    at: float
    features: str | None = None  # base64 of (128,) float32, when the event provided them
    reason: str | None = None  # why ``features`` is None (for people), else None

    @property
    def usable(self) -> bool:
        return self.features is not None

    def vector(self) -> np.ndarray | None:
        if self.features is None:
            return None
        return np.frombuffer(base64.b64decode(self.features), dtype=np.float32).copy()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["usable"] = self.usable
        return out


def find_event(redis: "redis_lib.Redis", keys: Keys, event_id: str) -> dict[str, Any]:
    """The recognition event with stream id ``event_id`` from the combined stream.

    Raises TrainingError when the id is malformed or the event is no longer there.
    """
    import redis as redis_lib

    try:
        entries = redis.xrange(keys.events(), min=event_id, max=event_id, count=1)
    except redis_lib.ResponseError as exc:
        raise BadEventIdError(f"{event_id!r} is not an event id (expected a stream id like 1717171717171-0)") from exc
    if not entries:
        raise BadEventIdError(
            f"event {event_id} was not found: it has expired from the event stream (events.stream_maxlen) "
            "or the id is wrong; feedback can only be given on recent events"
        )
    fields = entries[0][1]
    raw = fields.get(b"event") or fields.get("event")
    try:
        return json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise BadEventIdError(f"event {event_id} is not a JSON recognition event") from exc


NO_FEATURES = "this event carries no face features (only 'arrived'/'updated' events do, while events.features_ttl_s > 0)"
EXPIRED = ("the face features of this event have expired (events.features_ttl_s); "
           "the feedback is recorded but cannot be used for training")
BAD_FEATURES = "the stored face features of this event are not 128 finite float32 values"


def event_features(redis: "redis_lib.Redis", event: dict[str, Any]) -> tuple[str | None, str | None]:
    """The face features of a recognition event as (base64 of (128,) float32, None),
    or (None, reason) when there are none: never stored, expired, or malformed.

    Reads the event's inline ``features`` or the Redis key ``features_key``.
    """
    if isinstance(event.get("features"), str):
        try:
            raw = base64.b64decode(event["features"], validate=True)
        except ValueError:
            return None, BAD_FEATURES
    elif isinstance(event.get("features_key"), str):
        raw = redis.get(event["features_key"])
        if raw is None:
            return None, EXPIRED
    else:
        return None, NO_FEATURES
    if len(raw) != FEATURE_BYTES:
        return None, BAD_FEATURES
    vec = np.frombuffer(raw, dtype=np.float32)
    if not np.isfinite(vec).all() or not np.linalg.norm(vec) > 0:
        return None, BAD_FEATURES
    return base64.b64encode(raw).decode(), None


def record_feedback(
    redis: "redis_lib.Redis",
    keys: Keys,
    event_id: str,
    person_id: str,
    person: str,
    is_person: bool,
    maxlen: int = 100_000,
) -> tuple[str, Feedback]:
    """Append one feedback entry for ``event_id``; returns (stream id, entry).

    ``person_id``/``person`` must already be resolved against the gallery.
    """
    event = find_event(redis, keys, event_id)
    if event.get("type") == "error":
        raise BadEventIdError(f"event {event_id} is an error event (no face was recognised): nothing to confirm")
    features, reason = event_features(redis, event)
    if features is None:
        log.info("feedback on event %s kept for review only: %s", event_id, reason)
    entry = Feedback(
        event_id=event_id,
        person_id=person_id,
        person=person,
        is_person=is_person,
        camera=event.get("camera"),
        model_version=event.get("model_version"),
        at=time.time(),
        features=features,
        reason=reason,
    )
    stream_id = redis.xadd(keys.feedback(), {"feedback": json.dumps(entry.to_json())}, maxlen=maxlen, approximate=True)
    return stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id), entry


def read_feedback(redis: "redis_lib.Redis", keys: Keys) -> list[Feedback]:
    """Every feedback entry, oldest first (a malformed entry is skipped)."""
    out = []
    for _, fields in redis.xrange(keys.feedback()):
        try:
            data = json.loads(fields[b"feedback"])
            data.pop("usable", None)
            out.append(Feedback(**data))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def forget_feedback(redis: "redis_lib.Redis", keys: Keys, person_id: str) -> int:
    """Delete every feedback entry naming ``person_id`` (confirmations and
    corrections, with the face features they hold); returns entries deleted."""
    doomed = []
    for entry_id, fields in redis.xrange(keys.feedback()):
        try:
            named = json.loads(fields[b"feedback"] if b"feedback" in fields else fields["feedback"]).get("person_id")
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        if named == person_id:
            doomed.append(entry_id)
    for start in range(0, len(doomed), 500):
        redis.xdel(keys.feedback(), *doomed[start:start + 500])
    if doomed:
        log.info("deleted %d feedback entries naming forgotten person %s", len(doomed), person_id)
    return len(doomed)

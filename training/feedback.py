"""People's confirmations and corrections of recognition events.

``faec-rec feedback EVENT --is NAME`` says the face of event EVENT was NAME;
``--not NAME`` says it was not. Each becomes one entry of the stream
``keys.feedback()`` (field "feedback", JSON). The event is looked up in the
combined event stream first: feedback on an event that expired from the
stream (or never existed) is refused with a message saying so.

An entry can train the head only when it carries the face's backbone
features: the event's ``features`` (base64 float32) or a Redis key
``features_key`` holding them. Recognition events as published today carry
neither (messages carry ids, not arrays), so feedback is recorded and counted
but marked ``usable: false``; training skips those entries.
"""
from __future__ import annotations

import base64
import json
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from faec_rec.errors import TrainingError
from faec_rec.keys import Keys

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
        raise TrainingError(f"{event_id!r} is not an event id (expected a stream id like 1717171717171-0)") from exc
    if not entries:
        raise TrainingError(
            f"event {event_id} was not found: it has expired from the event stream (events.stream_maxlen) "
            "or the id is wrong; feedback can only be given on recent events"
        )
    fields = entries[0][1]
    raw = fields.get(b"event") or fields.get("event")
    try:
        return json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"event {event_id} is not a JSON recognition event") from exc


def _event_features(redis: "redis_lib.Redis", event: dict[str, Any]) -> str | None:
    if isinstance(event.get("features"), str):
        raw = base64.b64decode(event["features"])
    elif isinstance(event.get("features_key"), str):
        raw = redis.get(event["features_key"]) or b""
    else:
        return None
    if len(raw) != FEATURE_BYTES:
        return None
    vec = np.frombuffer(raw, dtype=np.float32)
    if not np.isfinite(vec).all() or not np.linalg.norm(vec) > 0:
        return None
    return base64.b64encode(raw).decode()


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
        raise TrainingError(f"event {event_id} is an error event (no face was recognised): nothing to confirm")
    entry = Feedback(
        event_id=event_id,
        person_id=person_id,
        person=person,
        is_person=is_person,
        camera=event.get("camera"),
        model_version=event.get("model_version"),
        at=time.time(),
        features=_event_features(redis, event),
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

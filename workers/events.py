"""Recognition events: the one record subscribers receive, and how it is published.

An event is one JSON object stored under the single field ``"event"`` of an entry in
two Redis streams, the camera's own (``keys.events(camera)``) and the combined one
(``keys.events()``), and mirrored on the pub/sub channel ``keys.events_channel()``.
Streams are capped with an approximate ``MAXLEN`` so they never grow without bound.

Fields (every event carries all of them; absent values are ``null``):

=============== ====================================================================
``type``        ``"arrived"`` (a new person-track), ``"updated"`` (its identity
                decision changed), ``"left"`` (unseen for the track timeout) or
                ``"error"`` (a frame could not be processed)
``camera``      camera id
``frame``       frame number within the camera (int)
``captured_at`` unix seconds (float) when the producer captured the frame
``processed_at`` unix seconds (float) when the worker finished the frame
``box``         ``[x1, y1, x2, y2]`` pixels in the frame as pushed
``person_id``   gallery person id, or null when unknown
``person``      display name, or null when unknown
``score``       cosine similarity of the best gallery match, [-1, 1]
``decision``    ``"known"`` or ``"unknown"``
``model_version`` the embedding/head version that made the decision
``track_id``    int, unique within the camera
``error``       null, or a short code: ``"frame_expired"``, ``"bad_image"``, ...
``detail``      null, or a human-readable sentence
``features_key`` null, or the Redis key (``keys.event_features``) holding the raw
                backbone features ((128,) float32 bytes) of the face that made an
                "arrived"/"updated" event, kept ``events.features_ttl_s`` seconds
                so ``faec-rec feedback`` on the event can train the head
``visitor``     null, or the visitor id (``"v-12"``, faec_rec.visitors) an unknown
                face of an "arrived"/"updated" event was grouped into
``snapshot``    null, or on "arrived" the Redis key (``keys.event_snapshot``) of a hash
                with the face crop and a downscaled frame as JPEG (``face``,
                ``frame``, ``box``), kept ``events.snapshot_ttl_s`` seconds
                (see :mod:`faec_rec.workers.snapshots`)
=============== ====================================================================
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from typing import Any, Iterable, Sequence

from faec_rec.index.decision import Decision  # the gallery's open-set answer, re-exported
from faec_rec.keys import Keys

log = logging.getLogger(__name__)

EVENT_FIELD = "event"

# Lua: append one event to the combined stream, then to its camera's stream under the SAME
# id, so an event has one id whichever stream it is read from (feedback, links, SSE resume
# take either). Where the camera stream already holds a later id (entries written before
# this rule, or a clock step back), that entry gets its own id instead.
XADD_BOTH_LUA = """
local function xadd_both(combined, camera, maxlen, text)
  local id = redis.call('XADD', combined, 'MAXLEN', '~', maxlen, '*', 'event', text)
  local done = redis.pcall('XADD', camera, 'MAXLEN', '~', maxlen, id, 'event', text)
  if type(done) == 'table' and done.err then
    redis.call('XADD', camera, 'MAXLEN', '~', maxlen, '*', 'event', text)
  end
  return id
end
"""
_PUBLISH_SCRIPT = XADD_BOTH_LUA + """
for j = 1, #ARGV - 2 do
  xadd_both(KEYS[1], KEYS[j + 1], ARGV[1], ARGV[j + 2])
  redis.call('PUBLISH', ARGV[2], ARGV[j + 2])
end
"""


class EventType(str, Enum):
    """What happened to a person-track (or to a frame, for errors)."""

    ARRIVED = "arrived"
    UPDATED = "updated"
    LEFT = "left"
    ERROR = "error"


@dataclass(frozen=True)
class Event:
    """One recognition event; see the module docstring for every field's meaning."""

    type: str
    camera: str
    frame: int | None = None
    captured_at: float | None = None
    processed_at: float | None = None
    box: list[float] | None = None
    person_id: str | None = None
    person: str | None = None
    score: float | None = None
    decision: str | None = None
    model_version: str | None = None
    track_id: int | None = None
    error: str | None = None
    detail: str | None = None
    features_key: str | None = None
    visitor: str | None = None
    snapshot: str | None = None

    def __post_init__(self) -> None:
        # Fail at construction, where the bug is, not in a subscriber. Enum members
        # are stored as their plain values so the JSON never depends on the enum.
        for name in ("type", "decision"):
            value = getattr(self, name)
            if isinstance(value, Enum):
                object.__setattr__(self, name, value.value)
        valid_types = {t.value for t in EventType}
        if self.type not in valid_types:
            raise ValueError(f"event type {self.type!r} must be one of {sorted(valid_types)}")
        if self.decision is not None and self.decision not in {d.value for d in Decision}:
            raise ValueError(f"event decision {self.decision!r} must be 'known', 'unknown' or None")
        if self.box is not None and len(self.box) != 4:
            raise ValueError(f"event box must be [x1, y1, x2, y2], got {self.box!r}")

    def to_json(self) -> dict[str, Any]:
        """A plain dict with every field (JSON-serialisable)."""
        out = asdict(self)
        if self.box is not None:
            out["box"] = [round(float(v), 1) for v in self.box]
        if self.score is not None:
            out["score"] = round(float(self.score), 4)
        return out

    def dumps(self) -> str:
        """The JSON text stored in streams and sent on the channel."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        """Rebuild an event from :meth:`to_json` output; unknown fields are ignored
        so that older readers survive a newer schema."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def loads(cls, text: str | bytes) -> Event:
        return cls.from_json(json.loads(text))

    def stamped(self, processed_at: float | None = None) -> Event:
        """A copy with ``processed_at`` set (now, by default)."""
        return replace(self, processed_at=time.time() if processed_at is None else processed_at)


def error_event(
    camera: str,
    code: str,
    detail: str | None = None,
    frame: int | None = None,
    captured_at: float | None = None,
    model_version: str | None = None,
) -> Event:
    """An ``"error"`` event for a frame that could not be processed.

    ``code`` is a short machine-readable reason (``"frame_expired"``, ``"bad_image"``);
    ``detail`` a sentence for people.
    """
    return Event(
        type=EventType.ERROR.value,
        camera=camera,
        frame=frame,
        captured_at=captured_at,
        processed_at=time.time(),
        model_version=model_version,
        error=code,
        detail=detail,
    )


def publish(redis: Any, keys: Keys, event: Event, maxlen: int) -> None:
    """Append ``event`` to its camera's stream and the combined stream, and publish it.

    ``redis``: a redis-py client; ``maxlen``: approximate cap of each stream
    (``settings.events.stream_maxlen``). One round trip, not a transaction: a
    subscriber may see the stream entry a moment before the pub/sub message.
    """
    publish_many(redis, keys, [event], maxlen)


def publish_many(redis: Any, keys: Keys, events: Sequence[Event], maxlen: int) -> None:
    """:func:`publish` for several events in one round trip (one script), in order; each
    event gets the same id in its camera's stream and in the combined one."""
    if not events:
        return
    redis.eval(_PUBLISH_SCRIPT, 1 + len(events), keys.events(), *(keys.events(e.camera) for e in events),
               int(maxlen), keys.events_channel(), *(e.dumps() for e in events))
    log.debug("published %d events", len(events), extra={"camera": events[0].camera})


def parse_entries(entries: Iterable[tuple[Any, dict[Any, Any]]]) -> list[tuple[str, Event]]:
    """Turn raw ``XRANGE``/``XREAD`` entries into ``(stream id, Event)`` pairs.

    Works with clients created with or without ``decode_responses``.
    """
    out: list[tuple[str, Event]] = []
    for entry_id, values in entries:
        raw = values.get(EVENT_FIELD, values.get(EVENT_FIELD.encode()))
        if raw is None:
            log.warning("stream entry %r has no %r field; skipped", entry_id, EVENT_FIELD)
            continue
        eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        out.append((eid, Event.loads(raw)))
    return out


def read_events(
    redis: Any,
    keys: Keys,
    camera: str | None = None,
    after: str = "0-0",
    count: int = 1000,
    block_ms: int | None = None,
) -> list[tuple[str, Event]]:
    """Events after stream id ``after`` (exclusive), oldest first.

    ``camera=None`` reads the combined stream. ``block_ms`` waits up to that long for
    new entries (``XREAD BLOCK``); ``None`` returns at once. Pass the last id
    returned back as ``after`` to follow the stream.
    """
    reply = redis.xread({keys.events(camera): after}, count=count, block=block_ms)
    if not reply:
        return []
    _stream, entries = reply[0]
    return parse_entries(entries)

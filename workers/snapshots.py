"""Snapshots of arrivals: the face crop and a downscaled frame, kept for sinks and the web app.

Every ``"arrived"`` event gets a ``snapshot`` field naming a Redis hash
(``keys.event_snapshot(camera, frame, face)``) that lives ``events.snapshot_ttl_s`` seconds:

=========== ==================================================================
``face``    JPEG of the face's box grown by a quarter on each side (clipped)
``frame``   JPEG of the whole frame, longest side at most ``events.snapshot_max_side``
``box``     JSON ``[x1, y1, x2, y2]`` of the face in the stored frame's pixels
=========== ==================================================================

Written before the events are published (in the same request, ahead of them), so a subscriber that sees the
event finds the pictures. Like ``features_key``, the key names a camera and a frame, not a
person: a forgotten person's face stays at most the TTL.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

FACE_MARGIN = 0.25
JPEG_QUALITY = 85


def _jpeg(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def pictures(image: np.ndarray, box: Sequence[float], max_side: int) -> dict[str, bytes]:
    """The snapshot hash fields for one face: ``image`` (h, w, 3) uint8 RGB, ``box`` in its pixels."""
    import cv2

    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = (x2 - x1) * FACE_MARGIN, (y2 - y1) * FACE_MARGIN
    cx1, cy1 = max(0, int(x1 - mx)), max(0, int(y1 - my))
    cx2, cy2 = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    face = image[cy1:max(cy2, cy1 + 1), cx1:max(cx2, cx1 + 1)]
    scale = min(1.0, max_side / max(h, w))
    frame = image if scale >= 1.0 else cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                  interpolation=cv2.INTER_AREA)
    return {"face": _jpeg(np.ascontiguousarray(face)), "frame": _jpeg(frame),
            "box": json.dumps([round(v * scale, 1) for v in (x1, y1, x2, y2)]).encode()}


def store_snapshots(redis: Any, keys: Any, settings: Any, camera: str, frame_no: int, image: np.ndarray,
                    boxes: Sequence[Sequence[float]], events: list[Any], pipe: Any = None) -> list[Any]:
    """Store a snapshot for each ``"arrived"`` event and return the events with ``snapshot`` set.

    ``boxes``: every face of the frame in detection order (the face index of the key);
    ``settings``: :class:`~faec_rec.config.EventsConfig`. A failure is logged and the events
    go out without snapshots: a picture is never worth losing an event. With ``pipe`` the
    writes are only queued there (ahead of the events, in the caller's one request).
    """
    ttl = settings.snapshot_ttl_s
    if ttl <= 0 or not boxes or not any(e.type == "arrived" and e.box is not None for e in events):
        return events
    queued = pipe
    try:
        out, pipe = [], queued if queued is not None else redis.pipeline(transaction=False)
        for event in events:
            if event.type != "arrived" or event.box is None:
                out.append(event)
                continue
            # The event's box is the observation's box: the nearest face is the one that made it.
            face = int(np.argmin([sum(abs(float(a) - float(b)) for a, b in zip(event.box, box)) for box in boxes]))
            key = keys.event_snapshot(camera, frame_no, face)
            pipe.hset(key, mapping=pictures(image, boxes[face], settings.snapshot_max_side))
            pipe.expire(key, ttl)
            out.append(replace(event, snapshot=key))
        if queued is None:
            pipe.execute()
        return out
    except Exception as exc:  # noqa: BLE001
        log.warning("could not store the snapshots of %s frame %s: %s", camera, frame_no, exc)
        return events


def read_snapshot(redis: Any, keys: Any, key: str, part: str = "face") -> bytes | None:
    """The JPEG bytes of ``part`` (``face`` or ``frame``) of the snapshot ``key`` (an event's
    ``snapshot``), or None once expired. ``key`` must be a snapshot key of this deployment
    (it may come from a client: no other key can be read through it)."""
    if part not in ("face", "frame"):
        raise ValueError(f"snapshot part {part!r} must be 'face' or 'frame'")
    parts = key.split(":") if isinstance(key, str) else []
    if len(parts) != 5 or key != keys.event_snapshot(parts[2], int(parts[3]) if parts[3].isdigit() else -1,
                                                       int(parts[4]) if parts[4].isdigit() else -1):
        raise ValueError(f"{key!r} is not an event snapshot key of prefix {keys.prefix!r}")
    return redis.hget(key, part)

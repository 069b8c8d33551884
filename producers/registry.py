"""The camera source registry: which cameras should run, kept in Redis.

One hash, ``keys.camera_sources()``: camera id -> JSON :class:`SourceRecord`.
``faec-rec cameras add|remove|list``, ``POST/DELETE /api/v1/cameras`` and the
Live page change it through :class:`~faec_rec.client.Client`; a runner in
registry mode (``faec-rec camera --registry``, :mod:`.supervisor`) watches it
and starts or stops camera threads to match.

A source URL may hold credentials (``rtsp://user:pass@cam/stream``). The record
keeps them (the runner needs them to connect; Redis is the deployment's trusted
store, as for everything else), but nothing shown leaves them in:
:func:`~faec_rec.producers.sources.mask_source` is applied to every listing, API response, page and log line.
"""
from __future__ import annotations

import json
import time
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

from faec_rec.errors import DuplicateCameraError, SourceError, UnknownCameraError
from faec_rec.keys import Keys, safe_id
from faec_rec.producers.sources import mask_source, parse_source

@dataclass(frozen=True)
class SourceRecord:
    """One registered camera: ``source`` is the real source (credentials included);
    ``fps`` None takes ``producers.fps``; ``loop`` replays a video file at its end."""

    camera: str
    source: str
    fps: float | None = None
    loop: bool = False
    added_at: float = 0.0
    added_by: str | None = None

    def public(self) -> dict[str, Any]:
        """The record as shown anywhere: the source masked."""
        return {**asdict(self), "source": mask_source(self.source)}


def check_source(camera: str, source: str, fps: float | None) -> None:
    """Raise ``ValueError``/:class:`SourceError` for an id, source or rate a camera cannot have."""
    safe_id(camera, "camera id")
    if not isinstance(source, str) or not source.strip() or len(source) > 2048:
        raise SourceError("camera source: give a USB index, an rtsp:// or http:// URL, or a video file path "
                          "(at most 2048 characters)")
    if any(unicodedata.category(c).startswith("C") for c in source):
        raise SourceError("camera source: control, format or unassigned characters are not allowed")
    parse_source(source.strip())
    if fps is not None and not (0 < fps <= 120):
        raise SourceError(f"camera {camera}: fps must be in (0, 120], got {fps}")


def add(redis: Any, keys: Keys, camera: str, source: str, *, fps: float | None = None, loop: bool = False,
        actor: str | None = None) -> SourceRecord:
    """Register a camera; raises :class:`DuplicateCameraError` if the id is registered."""
    check_source(camera, source, fps)
    record = SourceRecord(camera, source.strip(), float(fps) if fps is not None else None, bool(loop),
                          time.time(), actor)
    if not redis.hsetnx(keys.camera_sources(), camera, json.dumps(asdict(record))):
        raise DuplicateCameraError(f"camera {camera!r} is registered already: remove it first, or choose another id")
    return record


def remove(redis: Any, keys: Keys, camera: str) -> SourceRecord:
    """Unregister a camera (a registry runner stops it) and take it off the camera list;
    its counters stay. Raises :class:`UnknownCameraError`."""
    safe_id(camera, "camera id")
    pipe = redis.pipeline(transaction=True)
    pipe.hget(keys.camera_sources(), camera)
    pipe.hdel(keys.camera_sources(), camera)
    pipe.srem(keys.cameras(), camera)
    raw, _, _ = pipe.execute()
    if raw is None:
        raise UnknownCameraError(f"no camera {camera!r} in the source registry (see `faec-rec cameras list`)")
    return _record(raw)


def records(redis: Any, keys: Keys) -> dict[str, SourceRecord]:
    """Every registered camera by id (sources unmasked: for the runner only)."""
    out = {}
    for camera, raw in redis.hgetall(keys.camera_sources()).items():
        camera = camera.decode() if isinstance(camera, bytes) else camera
        try:
            out[camera] = _record(raw)
        except (ValueError, TypeError, KeyError):
            continue  # a damaged entry is skipped, not fatal to every camera
    return out


def _record(raw: bytes | str) -> SourceRecord:
    data = json.loads(raw)
    return SourceRecord(**{k: data[k] for k in SourceRecord.__dataclass_fields__ if k in data})

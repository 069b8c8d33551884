"""The worker side of visitors: every face decided "unknown" is kept and joined where it was decided.

Called by :mod:`faec_rec.workers.pipeline` (imports stay light: nothing heavy
loads until a worker first joins a face).

* Camera frames: a face that makes an "arrived" or "updated" event with the
  decision "unknown" (one face per track and identity change, not every
  frame) is stored and joined; the event carries its ``visitor``, and so does
  that track's "left" event, whether a worker or the idle sweep publishes it
  (``keys.visitor_tracks``, :func:`with_left_visitors`). Face id
  ``cam-<camera>-<frame>-<n>``: a redelivered frame stores nothing twice.
* Folder images: every unknown face is stored and joined; its entry in the
  job's result record gets ``visitor`` and ``face_id``. Face id
  ``img-<sha1(job, image, n)>``.

A failure to keep a face is logged and never fails the frame or the image:
recognition events matter more than the visitor bookkeeping.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from faec_rec.files import display_name, name_bytes
from faec_rec.index.backbone_swap import DEFAULT_BACKBONE as BUILTIN_BACKBONE

if TYPE_CHECKING:
    from faec_rec.workers.runtime import Runtime

log = logging.getLogger(__name__)

TRACKS_TTL_S = 3600  # how long a camera's track -> visitor map outlives its last unknown arrival


def _enabled(runtime: Runtime) -> bool:
    if not (getattr(runtime.settings, "visitors", None) and runtime.settings.visitors.enabled):
        return False
    return _config(runtime) is not None


def _config(runtime: Runtime) -> Any:
    """The visitor settings for the backbone in service, or None: grouping pauses.

    The visitors.* thresholds are in the built-in (dlib) backbone's cosine scale. Under a
    supplied backbone (faec-rec models use-backbone) the thresholds mapped to it when it
    was added serve (:func:`faec_rec.training.backbones.map_thresholds`); where none could
    be mapped (too few impostor pairs), grouping pauses, with a warning once.
    """
    backbone = getattr(getattr(runtime, "_engine", None), "backbone_version", BUILTIN_BACKBONE)
    if backbone == BUILTIN_BACKBONE:
        return runtime.settings.visitors
    cache: dict[str, Any] = getattr(runtime, "_visitor_configs", None) or {}
    runtime._visitor_configs = cache  # type: ignore[attr-defined]
    if backbone not in cache:
        from faec_rec.training.backbones import visitor_settings

        try:
            mapped = visitor_settings(runtime.redis, runtime.keys, backbone)
        except Exception:  # noqa: BLE001 - a record that cannot be read pauses grouping (until read), never recognition
            log.exception("visitor thresholds of backbone %s unreadable; this face is not grouped", backbone)
            return None
        if mapped is None:  # a backbone record never changes (names are not reused): decided once
            log.warning("visitors paused: the backbone in service is %s, and no visitor thresholds could be mapped to it "
                        "from the %s scale when it was added (see faec-rec models backbones)", backbone, BUILTIN_BACKBONE)
            cache[backbone] = None
        else:
            log.info("visitors group %s features with the thresholds mapped to it: %s", backbone, mapped)
            cache[backbone] = runtime.settings.visitors.model_copy(update=mapped)
    return cache[backbone]


def _collisions(runtime: Runtime) -> Any:
    found = getattr(runtime, "_collisions", None)
    if found is None:
        from faec_rec.visitors.corrections import Collisions

        found = Collisions(runtime.redis, runtime.keys)
        runtime._collisions = found  # type: ignore[attr-defined]
    return found


def check_collisions(runtime: Runtime, features: np.ndarray, matches: list[Any]) -> list[Any]:
    """Matches with corrected look-alikes turned "unknown" (see :mod:`faec_rec.visitors.corrections`)."""
    from faec_rec.visitors.corrections import check_collisions as check

    try:
        return check(_collisions(runtime), features, matches)
    except Exception:  # noqa: BLE001 - a correction cache must never stop recognition
        log.exception("collision check failed; matches kept as they were")
        return matches


def new_face(runtime: Runtime, face_id: str, result: Any, *, source: str, at: float, camera: str | None = None,
             frame: int | None = None, job: str | None = None, track: int | None = None) -> Any:
    """A :class:`~faec_rec.visitors.store.NewFace` from a pipeline ``FaceResult``."""
    from faec_rec.faces.image import encode_jpeg
    from faec_rec.visitors.quality import assess_face
    from faec_rec.visitors.store import NewFace

    quality: dict[str, float] = {}
    good = False
    crop = None
    if result.chip is not None and result.landmarks is not None:
        q = assess_face(np.asarray(result.box, np.float32), result.landmarks, result.chip)
        quality = {"face_px": round(q.face_px, 1), "yaw": round(q.yaw, 3), "sharpness": round(q.sharpness, 1),
                   "score": q.score()}
        good = q.good
        crop = encode_jpeg(result.chip, runtime.settings.visitors.crop_quality)
    return NewFace(face_id=face_id, features=result.features, good=good, quality=quality, source=source,
                   camera=camera, frame=frame, job=job, track=track, box=list(result.box), at=at, crop=crop)


def _join(runtime: Runtime, face: Any) -> str | None:
    from faec_rec.visitors.naming import visitors_of

    visitors = visitors_of(runtime)
    backbone = getattr(getattr(runtime, "_engine", None), "backbone_version", BUILTIN_BACKBONE)
    visitors.use_backbone(backbone, _config(runtime) or runtime.settings.visitors)
    return visitors.join(face).visitor


def join_frame(runtime: Runtime, payload: Any, results: list[Any], events: list[Any]) -> list[Any]:
    """Keep and join the unknown face of each arrived/updated "unknown" event; returns the
    events with ``visitor`` set."""
    if not _enabled(runtime) or not events:
        return events
    out = []
    tracks_key = runtime.keys.visitor_tracks(payload.camera)
    for event in with_left_visitors(runtime.redis, runtime.keys, payload.camera, events):
        if event.type in ("arrived", "updated") and event.decision == "unknown" and event.box is not None:
            i = _nearest(results, event.box)
            if i is not None and results[i].features is not None:
                try:
                    face = new_face(runtime, f"cam-{payload.camera}-{payload.frame}-{i}", results[i],
                                    source=f"{payload.camera}/{payload.frame}", at=payload.captured_at,
                                    camera=payload.camera, frame=payload.frame, track=event.track_id)
                    event = replace(event, visitor=_join(runtime, face))
                    if event.visitor and event.track_id is not None:
                        pipe = runtime.redis.pipeline(transaction=False)
                        pipe.hset(tracks_key, str(event.track_id), event.visitor)
                        pipe.expire(tracks_key, TRACKS_TTL_S)
                        pipe.execute()
                except Exception:  # noqa: BLE001
                    log.exception("could not keep unknown face of camera %s frame %s", payload.camera, payload.frame)
        out.append(event)
    return out


def with_left_visitors(redis: Any, keys: Any, camera: str, events: list[Any]) -> list[Any]:
    """``events`` with ``visitor`` set on every "left" event of an unknown track that was
    joined to a visitor (one HMGET of ``keys.visitor_tracks(camera)``).

    Both publishers of "left" call it: the worker that tracks a frame
    (:func:`join_frame`) and the idle sweep (``TrackStore.sweep``), which runs
    in the camera producer and knows nothing of visitors otherwise.
    """
    wanted = [i for i, e in enumerate(events)
              if e.type == "left" and e.decision == "unknown" and e.track_id is not None and e.visitor is None]
    if not wanted:
        return events
    held = redis.hmget(keys.visitor_tracks(camera), [str(events[i].track_id) for i in wanted])
    out = list(events)
    for i, raw in zip(wanted, held):
        if raw:
            out[i] = replace(out[i], visitor=raw.decode() if isinstance(raw, bytes) else str(raw))
    return out


def _nearest(results: list[Any], box: list[float]) -> int | None:
    best, best_d = None, float("inf")
    for i, r in enumerate(results):
        if r.decision != "unknown":
            continue
        d = float(np.abs(np.asarray(r.box, np.float64) - np.asarray(box, np.float64)).sum())
        if d < best_d:
            best, best_d = i, d
    return best


def join_image(runtime: Runtime, payload: Any, results: list[Any], records: list[dict[str, Any]]) -> None:
    """Keep and join every unknown face of a folder image; sets ``visitor`` and ``face_id``
    on its entry of ``records`` (the job result's faces, in the same order)."""
    if not _enabled(runtime):
        return
    now = time.time()
    for i, (result, record) in enumerate(zip(results, records)):
        record["visitor"] = None
        if result.decision != "unknown" or result.features is None:
            continue
        digest = hashlib.sha1(name_bytes(f"{payload.job}\0{payload.name}\0{i}")).hexdigest()[:24]
        try:
            face = new_face(runtime, f"img-{digest}", result, source=display_name(payload.name), at=now,
                            job=payload.job)
            record["visitor"] = _join(runtime, face)
            record["face_id"] = face.face_id
        except Exception:  # noqa: BLE001
            log.exception("could not keep unknown face %d of %s", i, payload.name)

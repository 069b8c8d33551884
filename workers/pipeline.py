"""The recognition pipeline the tasks call: one frame (camera) or one image (folder job).

``recognise_faces`` is the core: detect -> align -> embed (every face of the
image in one batch) -> project -> ``gallery.identify``. Around it,
``recognise_frame`` follows the frame protocol (in-flight list, TTL'd frame key,
tracker, events, camera counters) and ``identify_image`` the folder protocol
(one result record per image on the job's stream).

Both are idempotent, so a task redelivered after a worker died is harmless:

* a frame's key is deleted only after its events are published; a redelivered
  frame whose key still exists is processed, one whose key is gone (processed
  or dropped) is skipped;
* an image result is recorded together with a "seen" mark in the job hash, in
  one transaction; a redelivered image already seen is skipped.

Batching across frames: not done, by measurement. Detection runs once per
frame whatever the batch, and a 640x480 frame holds one or two faces; one face
embeds in 28 ms at batch 1 against 20 ms per face at batch 4 on this box, so a
task that gathered four waiting frames would save ~6 % of a frame's cost, at
the price of latency and of a larger redelivery unit (README, benchmarks.system).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from faec_rec import metrics
from faec_rec.errors import ImageError, PayloadError, VersionMismatchError
from faec_rec.files import name_bytes
from faec_rec.workers.snapshots import store_snapshots
from faec_rec.visitors import hook as _visitors

if TYPE_CHECKING:
    from faec_rec.workers.runtime import Runtime

log = logging.getLogger(__name__)

# Upper edges (ms) of the capture->processed latency histogram kept per camera
# in ``keys.camera_stats(camera)`` as fields ``latency_ms_le_<edge>``.
LATENCY_EDGES_MS = (25, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000, 10_000)


# ---- payloads ---------------------------------------------------------------
def _field(payload: dict[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    if not isinstance(payload, dict):
        raise PayloadError(f"task payload must be a JSON object, got {type(payload).__name__}")
    value = payload.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise PayloadError(f"task payload field {name!r} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


@dataclass(frozen=True)
class FramePayload:
    """A camera frame waiting in Redis (see the frame protocol in the README)."""

    camera: str
    frame: int
    key: str
    captured_at: float
    width: int = 0
    height: int = 0

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> FramePayload:
        """Parse a task payload; raises :class:`PayloadError` naming a bad field."""
        return cls(
            camera=_field(payload, "camera", str),
            frame=_field(payload, "frame", int),
            key=_field(payload, "key", str),
            captured_at=float(_field(payload, "captured_at", (int, float))),
            width=int(_field(payload, "width", int, optional=True) or 0),
            height=int(_field(payload, "height", int, optional=True) or 0),
        )


@dataclass(frozen=True)
class ImagePayload:
    """One image of a folder job: a path the worker can read, or uploaded bytes."""

    job: str
    name: str
    path: str | None = None
    key: str | None = None

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> ImagePayload:
        path = _field(payload, "path", str, optional=True)
        key = _field(payload, "key", str, optional=True)
        if path is None and key is None:
            raise PayloadError("identify payload needs a 'path' or an upload 'key'")
        name = _field(payload, "name", str, optional=True) or path or key
        return cls(job=_field(payload, "job", str), name=name, path=path, key=key)


# ---- the core ---------------------------------------------------------------
@dataclass(frozen=True)
class FaceResult:
    """One face found and looked up.

    box: ``[x1, y1, x2, y2]`` image pixels; score: cosine similarity of the best
    gallery match in [-1, 1] (None with an empty gallery); decision: "known" or
    "unknown"; person/person_id: null when unknown; runner_up: the next
    person's name (or None); features: the face's raw backbone features, (128,)
    float32 (not part of :meth:`to_json`: results carry ids, not arrays).
    """

    box: list[float]
    decision: str
    score: float | None = None
    person_id: str | None = None
    person: str | None = None
    runner_up: str | None = None
    detection_score: float = 0.0
    features: np.ndarray | None = field(default=None, repr=False, compare=False)
    # the aligned (150, 150, 3) chip and (5, 2) landmarks, for keeping unknown faces (visitors)
    chip: np.ndarray | None = field(default=None, repr=False, compare=False)
    landmarks: np.ndarray | None = field(default=None, repr=False, compare=False)
    quality: float | None = None  # sharpness of the aligned chip (the enrolment gate's measure); weighs track votes

    def to_json(self) -> dict[str, Any]:
        return {
            "box": [round(float(v), 1) for v in self.box],
            "person_id": self.person_id,
            "person": self.person,
            "score": None if self.score is None else round(float(self.score), 4),
            "decision": self.decision,
            "runner_up": self.runner_up,
        }


def _face_result(face: Any, match: Any, features: np.ndarray | None = None, chip: np.ndarray | None = None,
                 quality: float | None = None) -> FaceResult:
    decision = getattr(match.decision, "value", match.decision)
    known = decision == "known"
    runner = getattr(match, "runner_up", None)
    runner_name = getattr(runner, "name", None) if runner is not None else None
    return FaceResult(
        box=[float(v) for v in face.box],
        decision=str(decision),
        score=None if match.score is None else float(match.score),
        person_id=match.person_id if known else None,
        person=match.name if known else None,
        runner_up=runner_name,
        detection_score=float(face.score),
        features=features,
        chip=chip,
        landmarks=getattr(face, "landmarks", None),
        quality=quality,
    )


def recognise_faces(runtime: Runtime, image: np.ndarray) -> list[FaceResult]:
    """Every face of ``image`` ((h, w, 3) uint8 RGB) looked up in the gallery.

    All faces are embedded in one batch. An empty gallery makes every face
    "unknown". The caller refreshes the runtime (gallery sync, model swap).
    """
    with metrics.stage("analyse"):
        analysed = runtime.engine.analyse(image)
    if not analysed:
        return []
    features = np.stack([a.features for a in analysed]).astype(np.float32, copy=False)
    with metrics.stage("identify"):
        matches = _identify(runtime, features)
        matches = _visitors.check_collisions(runtime, features, matches)
    return [_face_result(a.face, m, features[i], getattr(a, "crop", None), quality=_chip_sharpness(a))
            for i, (a, m) in enumerate(zip(analysed, matches))]


def _chip_sharpness(analysed: Any) -> float | None:
    """The aligned chip's sharpness (weighs the face in its track's vote); None without a chip."""
    crop = getattr(analysed, "crop", None)
    if crop is None:
        return None
    from faec_rec.faces.quality import sharpness

    return sharpness(crop)


def _identify(runtime: Runtime, features: np.ndarray) -> list[Any]:
    gallery = runtime.gallery
    for attempt in (1, 2):
        projector = gallery.projector
        try:
            return list(gallery.identify(projector.project(features), projector.version))
        except VersionMismatchError:
            # The replica switched version between project() and identify()
            # (a gallery "version" event): refresh and project again once.
            if attempt == 2:
                raise
            runtime.refresh()
    raise AssertionError("unreachable")


def decode(data: bytes, name: str, settings: Any = None) -> np.ndarray:
    """JPEG/PNG bytes -> (h, w, 3) uint8 RGB; raises :class:`ImageError`.

    ``settings`` (a :class:`~faec_rec.config.Settings`) supplies the size
    limits checked before decoding.
    """
    from faec_rec.faces.image import load_image

    if settings is None:
        return load_image(data, name=name)
    return load_image(data, name=name, max_pixels=settings.faces.max_image_pixels,
                      max_bytes=settings.faces.max_image_bytes)


# ---- camera frames ----------------------------------------------------------
@dataclass
class FrameOutcome:
    """What happened to one frame: "processed", "skipped" (dropped by the producer or
    done before), "stale" (shed: see ``workers.max_frame_age_s``) or an error code."""

    status: str
    faces: int = 0
    events: int = 0
    latency_ms: float | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _latency_field(ms: float) -> str:
    for edge in LATENCY_EDGES_MS:
        if ms <= edge:
            return f"latency_ms_le_{edge}"
    return "latency_ms_le_inf"


def recognise_frame(runtime: Runtime, payload: FramePayload, guard: Any = None) -> FrameOutcome:
    """Process one camera frame by the frame protocol; publish its events.

    Steps: claim (LREM from the in-flight list) and read (GET), with the gallery
    refresh's reads and the camera's tracker state, in one request -> decode ->
    recognise -> plan the tracks -> commit the tracker state, events, counters and
    the frame key's deletion in one request (:mod:`faec_rec.workers.commit`). A frame
    dropped by backpressure is skipped quietly; an expired or undecodable one becomes
    an error event; the rest goes on. A frame with known faces adds one request (the
    corrections check), one with unknown arrivals the visitors' own. ``guard`` (a
    :class:`~faec_rec.workers.deadletter.RunGuard`): the delivery is counted in the claim's
    request; a task over its limit is not processed ("parked": its frame counted as dropped).
    """
    from faec_rec.workers import events as ev

    r, keys = runtime.redis, runtime.keys
    stats = keys.camera_stats(payload.camera)
    maxlen = runtime.settings.events.stream_maxlen

    # Claim and read in one round trip, with what the refresh and the tracker read.
    claim = r.pipeline(transaction=False)
    counted = guard.queue_begin(claim) if guard is not None else 0
    claim.lrem(keys.in_flight(payload.camera), 1, payload.key)
    claim.get(payload.key)
    refresh = runtime.queue_refresh(claim)
    runtime.track_store.queue_read(claim, payload.camera)
    replies = claim.execute()
    runs, replies = (replies[0] if counted else None), replies[counted:]
    claimed, data, *rest = replies
    (track_read,) = refresh.take(rest)
    if guard is not None and guard.over(runs):
        # Its earlier runs killed their workers: the task parks itself; the frame is dropped.
        if data is not None:
            pipe = r.pipeline(transaction=True)
            pipe.hincrby(stats, "dropped", 1).delete(payload.key)
            pipe.execute()
            metrics.frames_dropped(payload.camera)
        return FrameOutcome("parked", detail=str(runs))
    if data is None:
        if not claimed:
            # Dropped by the producer (already counted) or processed by an
            # earlier delivery of this task: nothing to do.
            return FrameOutcome("skipped")
        ev.publish(r, keys, ev.error_event(
            payload.camera, "frame_expired",
            f"frame {payload.frame} expired before a worker read it; raise workers.frame_ttl_s or add workers",
            frame=payload.frame, captured_at=payload.captured_at), maxlen)
        r.hincrby(stats, "errors", 1)
        metrics.frame_error(payload.camera, "frame_expired")
        return FrameOutcome("frame_expired")

    if _stale(runtime, payload):
        # Newer frames of this camera wait: this one is shed, counted as dropped.
        pipe = r.pipeline(transaction=True)
        pipe.hincrby(stats, "dropped", 1).hincrby(stats, "stale", 1).delete(payload.key)
        pipe.execute()
        metrics.frames_dropped(payload.camera)
        return FrameOutcome("stale")

    runtime.refresh(refresh)
    try:
        image = decode(data, payload.key, runtime.settings)
    except ImageError as exc:
        ev.publish(r, keys, ev.error_event(
            payload.camera, "bad_image", exc.reason, frame=payload.frame,
            captured_at=payload.captured_at, model_version=runtime.model_version), maxlen)
        pipe = r.pipeline(transaction=True)
        pipe.hincrby(stats, "errors", 1).delete(payload.key)
        pipe.execute()
        metrics.frame_error(payload.camera, "bad_image")
        return FrameOutcome("bad_image", detail=exc.reason)

    results = recognise_faces(runtime, image)
    with metrics.stage("track_publish"):
        events, latency_ms = _track_and_commit(runtime, payload, image, results, track_read)
    metrics.frame_processed(payload.camera, payload.captured_at, len(results),
                            now=payload.captured_at + latency_ms / 1000.0)
    return FrameOutcome("processed", faces=len(results), events=len(events), latency_ms=round(latency_ms, 1))


def _track_and_commit(runtime: Runtime, payload: FramePayload, image: np.ndarray, results: list[FaceResult],
                      track_read: Any) -> tuple[list[Any], float]:
    """Plan the camera's tracks for this frame, then write the plan, its event features and
    snapshots, its events and the counters in one request; on a conflict (another worker
    moved the tracks on, or a person they name was forgotten) plan again. Returns the
    events published and the capture-to-write latency (ms)."""
    from faec_rec.errors import TrackStateConflict
    from faec_rec.workers import commit

    r, keys, store = runtime.redis, runtime.keys, runtime.track_store
    forget: set[str] = set()
    deadline = time.monotonic() + store.max_wait_s
    while True:
        plan = track(runtime, payload, results, read=track_read, forget=forget)
        pipe = r.pipeline(transaction=False)
        store_event_features(runtime, payload, results, plan.events, pipe=pipe)
        events = store_snapshots(r, keys, runtime.settings.events, payload.camera, payload.frame, image,
                                 [f.box for f in results], plan.events, pipe=pipe)
        events = _visitors.join_frame(runtime, payload, results, events)
        commit.queue_commit(pipe, keys, camera=payload.camera, frame_key=payload.key, plan=plan, events=events,
                            captured_at=payload.captured_at, faces=len(results),
                            maxlen=runtime.settings.events.stream_maxlen, updated_at=time.time(),
                            latency_edges_ms=LATENCY_EDGES_MS)
        done = commit.parse_commit(pipe.execute(raise_on_error=False)[-1])
        if done.status == commit.COMMITTED:
            return events, float(done.latency_ms or 0.0)
        if time.monotonic() >= deadline:
            raise TrackStateConflict(
                f"tracker state of camera {payload.camera!r} kept changing for {store.max_wait_s} s; "
                "too many workers on one camera, or raise TrackStore.max_wait_s")
        if done.status == commit.FORGOTTEN:
            forget |= set(done.forgotten)  # the same state, planned again with them forgotten
        else:
            # Another worker wrote this camera's state first: plan again on its result at once
            # (see TrackStore._transact for why there is no growing back-off).
            pipe = r.pipeline(transaction=False)
            store.queue_read(pipe, payload.camera)
            (track_read,) = pipe.execute()


def _stale(runtime: Runtime, payload: FramePayload) -> bool:
    """True when the frame is older than ``workers.max_frame_age_s`` and a newer
    frame of its camera is waiting (the newest frame is never shed)."""
    max_age = runtime.settings.workers.max_frame_age_s
    if not max_age or time.time() - payload.captured_at <= max_age:
        return False
    return bool(runtime.redis.llen(runtime.keys.in_flight(payload.camera)))


def track(runtime: Runtime, payload: FramePayload, results: list[FaceResult], read: Any = None,
          forget: set[str] | None = None) -> Any:
    """Feed one frame's faces to the camera's shared tracker.

    Without ``read``: applied and written at once (a transaction); returns the events
    to publish. With ``read`` (the state read by :meth:`TrackStore.queue_read`): returns
    the :class:`~faec_rec.workers.tracker.TrackPlan` for the caller to commit
    (``forget``: person ids to treat as forgotten first).
    """
    from faec_rec.workers.tracker import Observation

    version = runtime.model_version
    features_keys = None
    if runtime.settings.events.features_ttl_s > 0:
        features_keys = [
            runtime.keys.event_features(payload.camera, payload.frame, i) if f.features is not None else None
            for i, f in enumerate(results)
        ]
    observations = [
        Observation(
            box=tuple(f.box), person_id=f.person_id, person=f.person,
            score=0.0 if f.score is None else f.score, decision=f.decision, model_version=version,
            quality=getattr(f, "quality", None),
        )
        for f in results
    ]
    if read is not None:
        return runtime.track_store.plan(payload.camera, payload.frame, payload.captured_at, observations, read,
                                        forget=frozenset(forget or ()), features_keys=features_keys)
    return runtime.track_store.update(payload.camera, payload.frame, payload.captured_at, observations,
                                      enrolled=lambda ids: _enrolled(runtime, ids), features_keys=features_keys)


def store_event_features(runtime: Runtime, payload: FramePayload, results: list[FaceResult], events: list[Any],
                         pipe: Any = None) -> int:
    """Store the raw features of each face that made an event with a ``features_key``.

    Written before the events are published, so a subscriber that sees an event
    finds its features; each key (``keys.event_features(camera, frame, face)``)
    lives ``events.features_ttl_s`` seconds, which is also the bound on how long a
    forgotten person's face stays there (the keys name cameras and frames, not
    people). A redelivered frame rewrites the same bytes. Returns keys written. With
    ``pipe`` the writes are only queued there (ahead of the events, in one request).
    """
    ttl = runtime.settings.events.features_ttl_s
    wanted = {e.features_key for e in events if e.features_key is not None}
    if not wanted or ttl <= 0:
        return 0
    queued = pipe
    pipe = queued if queued is not None else runtime.redis.pipeline(transaction=False)
    for i, f in enumerate(results):
        key = runtime.keys.event_features(payload.camera, payload.frame, i)
        if key in wanted and f.features is not None:
            pipe.set(key, np.ascontiguousarray(f.features, dtype=np.float32).tobytes(), ex=ttl)
    if queued is None:
        pipe.execute()
    return len(wanted)


def _enrolled(runtime: Runtime, person_ids: set[str]) -> set[str]:
    """The ids among ``person_ids`` still in the gallery (Redis, the source of truth)."""
    ids = sorted(person_ids)
    flags = runtime.redis.smismember(runtime.keys.people(), ids)
    return {pid for pid, flag in zip(ids, flags) if flag}


def latency_percentiles(stats: dict[bytes | str, bytes | str], quantiles: tuple[float, ...] = (0.5, 0.95)) -> dict[float, float | None]:
    """Quantiles (ms) from a camera's latency histogram (``keys.camera_stats``).

    Linear interpolation inside the bucket; the open top bucket reports its
    lower edge. None when no frame was counted.
    """
    counts: list[tuple[float, int]] = []
    for edge in (*LATENCY_EDGES_MS, float("inf")):
        name = f"latency_ms_le_{edge if edge != float('inf') else 'inf'}"
        raw = stats.get(name, stats.get(name.encode(), 0)) if isinstance(stats, dict) else 0
        counts.append((float(edge), int(raw or 0)))
    total = sum(c for _, c in counts)
    out: dict[float, float | None] = {}
    for q in quantiles:
        if total == 0:
            out[q] = None
            continue
        target, seen, lower = q * total, 0, 0.0
        for edge, count in counts:
            if count and seen + count >= target:
                if edge == float("inf"):
                    out[q] = lower
                else:
                    out[q] = lower + (edge - lower) * (target - seen) / count
                break
            seen += count
            lower = edge if edge != float("inf") else lower
    return out


# ---- folder jobs / single images ----------------------------------------------
def queue_upload_read(runtime: Runtime, pipe: Any, key: str) -> int:
    """Queue the read of an upload on the caller's ``pipe``: whether it exists, its size and
    at most ``faces.max_image_bytes`` + 1 of its bytes (a larger one is never pulled whole).
    Returns how many replies that takes; hand them to :func:`read_image_bytes` as ``read``."""
    upload = runtime.keys.upload(key)
    pipe.exists(upload)
    pipe.strlen(upload)
    pipe.getrange(upload, 0, runtime.settings.faces.max_image_bytes)
    return 3


def read_image_bytes(runtime: Runtime, key: str | None, path: str | None, name: str,
                     read: list[Any] | None = None) -> bytes:
    """The bytes of an uploaded image (``keys.upload(key)``) or of a file the worker may read.

    At most ``faces.max_image_bytes`` are read (a larger image is refused before it
    fills memory). A ``path`` must be a regular file inside ``workers.read_roots``
    (symlinks resolved); the embedded backend and ``faec-rec worker`` on the private
    Redis (which only this user's commands reach) set ``/`` when none are configured.

    ``read``: the replies of :func:`queue_upload_read` for ``key``, already fetched.

    Raises :class:`ImageError` naming ``name``: ``upload_expired``, ``too_large``,
    ``not_allowed``, ``not_found`` or ``unreadable``.
    """
    cap = runtime.settings.faces.max_image_bytes
    if key is not None:
        upload = runtime.keys.upload(key)
        exists, size, head = read if read is not None else (None, runtime.redis.strlen(upload), None)
        if size > cap:
            raise ImageError(name, f"too_large: {size} bytes (faces.max_image_bytes is {cap})")
        data = runtime.redis.get(upload) if read is None else (head if exists else None)
        if data is None:
            raise ImageError(name, "upload_expired: the uploaded bytes expired before a worker read them; send again")
        return bytes(data)
    return read_file_bounded(path or "", name, cap, allowed_roots(runtime.settings))


def allowed_roots(settings: Any) -> tuple[Path, ...] | None:
    """Folders a task may name files in: ``workers.read_roots`` resolved; ``None`` (any
    readable file) on the private Redis with no roots set; ``()`` (none) otherwise."""
    roots = tuple(Path(r).expanduser().resolve() for r in settings.workers.read_roots)
    if not roots and not settings.redis_url:
        return None
    return roots


def read_file_bounded(path: str, name: str, cap: int, roots: tuple[Path, ...] | None) -> bytes:
    """Read at most ``cap`` bytes of the regular file ``path``, which must lie under one of
    ``roots`` (``None``: anywhere). Raises :class:`ImageError` (see :func:`read_image_bytes`)."""
    if not path:
        raise ImageError(name, "not_found: the task names no file")
    try:
        real = Path(os.path.realpath(path))
    except (OSError, ValueError) as exc:
        raise ImageError(name, f"unreadable: {exc}") from exc
    if roots is not None and not any(real == root or root in real.parents for root in roots):
        raise ImageError(name, "not_allowed: the file is outside the folders this worker may read "
                               "(workers.read_roots); upload the bytes instead")
    try:
        # O_NOFOLLOW: the name checked above must not have become a link since.
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as exc:
        raise ImageError(name, "not_found: no such file on the worker") from exc
    except OSError as exc:
        raise ImageError(name, f"unreadable: {exc.strerror}") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ImageError(name, "unreadable: not a regular file")
    with os.fdopen(fd, "rb") as f:
        if info.st_size > cap:
            raise ImageError(name, f"too_large: {info.st_size} bytes (faces.max_image_bytes is {cap})")
        data = f.read(cap + 1)  # +1: a file that grew since fstat is still caught
    if len(data) > cap:
        raise ImageError(name, f"too_large: more than {cap} bytes (faces.max_image_bytes)")
    return data


def _seen_field(name: str) -> str:
    # a file name that is not valid UTF-8 arrives with lone surrogates ('\udce9' for
    # byte 0xe9): hash its exact bytes
    return "seen:" + hashlib.sha1(name_bytes(name)).hexdigest()[:20]


def identify_image(runtime: Runtime, payload: ImagePayload) -> dict[str, Any]:
    """Identify every face of one image of a folder job and record the result.

    Appends ``{"path", "faces": [...], "error", "model_version"}`` to
    ``keys.job_results(job)`` and counts it in ``keys.job(job)`` (done, errors).
    A redelivered image already recorded is not recorded twice. Returns the record.
    """
    r, keys = runtime.redis, runtime.keys
    job_key = keys.job(payload.job)
    seen = _seen_field(payload.name)
    # The "seen" mark, the refresh's reads and the uploaded bytes in one round trip.
    pipe = r.pipeline(transaction=False)
    pipe.hexists(job_key, seen)
    refresh = runtime.queue_refresh(pipe)
    if payload.key is not None:
        queue_upload_read(runtime, pipe, payload.key)
    done, *rest = pipe.execute()
    upload_read = refresh.take(rest) if payload.key is not None else None
    if done:
        return {"path": payload.name, "skipped": "already recorded"}

    runtime.refresh(refresh)
    record: dict[str, Any] = {"path": payload.name, "faces": [], "error": None, "model_version": runtime.model_version}
    try:
        data = read_image_bytes(runtime, payload.key, payload.path, payload.name, read=upload_read)
        image = decode(data, payload.name, runtime.settings)
        faces = recognise_faces(runtime, image)
        record["faces"] = [f.to_json() for f in faces]
        _visitors.join_image(runtime, payload, faces, record["faces"])
    except ImageError as exc:
        record["error"] = exc.reason
        metrics.frame_error("folder", exc.reason.split(":")[0])
        log.warning("job %s: %s: %s", payload.job, payload.name, exc.reason)

    _record(runtime, payload, record)
    return record


def record_image_error(runtime: Runtime, payload: ImagePayload, reason: str) -> dict[str, Any]:
    """Record ``reason`` as the result of one image of a folder job (e.g. a parked task)."""
    if runtime.redis.hexists(runtime.keys.job(payload.job), _seen_field(payload.name)):
        return {"path": payload.name, "skipped": "already recorded"}
    record: dict[str, Any] = {"path": payload.name, "faces": [], "error": reason, "model_version": None}
    metrics.frame_error("folder", reason.split(":")[0])
    _record(runtime, payload, record)
    return record


def _record(runtime: Runtime, payload: ImagePayload, record: dict[str, Any]) -> None:
    r, keys = runtime.redis, runtime.keys
    job_key, seen = keys.job(payload.job), _seen_field(payload.name)
    ttl = runtime.settings.workers.result_ttl_s
    pipe = r.pipeline(transaction=True)
    pipe.xadd(keys.job_results(payload.job), {"result": json.dumps(record, separators=(",", ":"))})
    pipe.hincrby(job_key, "done", 1)
    if record["error"]:
        pipe.hincrby(job_key, "errors", 1)
    pipe.hset(job_key, seen, 1)
    pipe.expire(job_key, ttl)
    pipe.expire(keys.job_results(payload.job), ttl)
    if payload.key is not None:
        pipe.delete(keys.upload(payload.key))
    pipe.execute()

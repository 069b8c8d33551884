"""Folder jobs in batches: many images per task, their faces embedded in one model call.

A task carries up to ``workers.folder_batch`` images of one job. The worker reads and
decodes them on a small thread pool (OpenCV and TFLite release the GIL), detects and aligns
each as soon as it is decoded, each thread with a detector of its own (so at most
``workers.decode_threads`` decoded images are held,
whatever their size: memory stays bounded by chips of 150x150 pixels), then embeds every face
of the batch in one call and looks them all up in the gallery in one call. Results are still
one record per image, written exactly as :func:`faec_rec.workers.pipeline.identify_image`
writes them (same "seen" mark, so a redelivered batch records nothing twice), and one bad
image only gives that image an ``error``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from faec_rec import metrics
from faec_rec.errors import ImageError, PayloadError
from faec_rec.visitors import hook as _visitors
from faec_rec.workers.pipeline import ImagePayload, _face_result, _identify, _seen_field, decode, read_image_bytes

if TYPE_CHECKING:
    from faec_rec.faces.types import Face
    from faec_rec.workers.runtime import Runtime

log = logging.getLogger(__name__)


def payloads_from_json(payload: dict[str, Any]) -> list[ImagePayload]:
    """``{"job": str, "images": [{"path"|"key", "name"}, ...]}`` -> one :class:`ImagePayload` each."""
    job = payload.get("job")
    images = payload.get("images")
    if not isinstance(job, str) or not isinstance(images, list) or not images:
        raise PayloadError("identify batch payload needs a 'job' and a non-empty 'images' list")
    return [ImagePayload.from_json({**item, "job": job}) for item in images if isinstance(item, dict)]


@dataclass
class _Prepared:
    """One image after decode, detection and alignment (the decoded pixels are dropped)."""

    payload: ImagePayload
    faces: list["Face"]
    chips: np.ndarray | None
    error: str | None = None


class _DetectorPool:
    """Detectors lent to the decode threads: a BlazeFace interpreter is not thread-safe (the
    detector serialises its calls), so two threads detect in parallel only with two of them.
    The engine's own detector is the first; others are made on demand and kept."""

    def __init__(self) -> None:
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._made = 0
        self._lock = threading.Lock()

    def borrow(self, runtime: "Runtime") -> Any:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            self._made += 1
            first = self._made == 1
        if first:
            return runtime.engine.detector
        from faec_rec.faces.detect import make_detector

        return make_detector(runtime.settings.faces)

    def give_back(self, detector: Any) -> None:
        self._free.put(detector)


_pools: "weakref.WeakKeyDictionary[Any, _DetectorPool]" = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()


def _detector_pool(runtime: "Runtime") -> _DetectorPool:
    with _pools_lock:
        pool = _pools.get(runtime)
        if pool is None:
            pool = _pools[runtime] = _DetectorPool()
        return pool


@contextlib.contextmanager
def lent_detector(runtime: "Runtime") -> Iterator[Any]:
    """A detector for this thread alone while the block runs (see :class:`_DetectorPool`)."""
    pool = _detector_pool(runtime)
    detector = pool.borrow(runtime)
    try:
        yield detector
    finally:
        pool.give_back(detector)


def _prepare(runtime: "Runtime", payload: ImagePayload) -> _Prepared:
    engine = runtime.engine
    try:
        image = decode(read_image_bytes(runtime, payload.key, payload.path, payload.name), payload.name, runtime.settings)
        with lent_detector(runtime) as detector:
            faces = detector.detect(image)
        chips = engine.align(image, faces) if faces else None
        return _Prepared(payload, faces, chips)
    except ImageError as exc:
        return _Prepared(payload, [], None, exc.reason)


def identify_images(runtime: "Runtime", payloads: list[ImagePayload]) -> list[dict[str, Any]]:
    """Identify every face of several images of one job; one result record per image.

    Images already recorded (a redelivered batch) are skipped. Returns the records written.
    """
    if not payloads:
        return []
    r, keys = runtime.redis, runtime.keys
    job = payloads[0].job
    job_key = keys.job(job)
    seen = r.hmget(job_key, [_seen_field(p.name) for p in payloads])
    todo = [p for p, done in zip(payloads, seen) if not done]
    if not todo:
        return []
    runtime.refresh()
    engine = runtime.engine  # load once, before the threads race for it
    threads = max(1, min(runtime.settings.workers.decode_threads, len(todo)))
    with metrics.stage("analyse"):
        if threads == 1:
            prepared = [_prepare(runtime, p) for p in todo]
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix="faec-decode") as pool:
                prepared = list(pool.map(lambda p: _prepare(runtime, p), todo))
        chips = [p.chips for p in prepared if p.chips is not None and len(p.chips)]
        features = engine.features(np.concatenate(chips)) if chips else np.zeros((0, 128), np.float32)
    matches: list[Any] = []
    if len(features):
        with metrics.stage("identify"):
            matches = _identify(runtime, features)
            matches = _visitors.check_collisions(runtime, features, matches)

    records = []
    start = 0
    for item in prepared:
        record: dict[str, Any] = {"path": item.payload.name, "faces": [], "error": item.error,
                                  "model_version": runtime.model_version}
        n = len(item.faces) if item.chips is not None else 0
        results = [_face_result(face, matches[start + i], features[start + i], item.chips[i])
                   for i, face in enumerate(item.faces[:n])]
        record["faces"] = [f.to_json() for f in results]
        # unknown faces are kept and joined to visitors, as on the one-image path
        _visitors.join_image(runtime, item.payload, results, record["faces"])
        start += n
        if item.error:
            metrics.frame_error("folder", item.error.split(":")[0])
            log.warning("job %s: %s: %s", job, item.payload.name, item.error)
        records.append(record)

    ttl = runtime.settings.workers.result_ttl_s
    pipe = r.pipeline(transaction=True)
    for item, record in zip(prepared, records):
        pipe.xadd(keys.job_results(job), {"result": json.dumps(record, separators=(",", ":"))})
        pipe.hincrby(job_key, "done", 1)
        if record["error"]:
            pipe.hincrby(job_key, "errors", 1)
        pipe.hset(job_key, _seen_field(item.payload.name), 1)
        if item.payload.key is not None:
            pipe.delete(keys.upload(item.payload.key))
    pipe.expire(job_key, ttl)
    pipe.expire(keys.job_results(job), ttl)
    pipe.execute()
    return records
